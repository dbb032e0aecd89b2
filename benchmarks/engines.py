"""The rule engines: microseconds per patient for celpy, cel and the hand-written floor.

Facts come from a generated population through the real mapper, so patients carry what a
hospital gives them. Two groups are timed: every patient, and only patients with at least one
record the rules read (the cases the engine really has to work on). No memoisation here.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import AS_OF, ROOT, population, write_outputs
from benchmarks.relieve_floor import evaluate as floor_evaluate


def _facts(patients: int) -> list[tuple[str, dict[str, Any]]]:
    from service.ruleset.loader import load_ruleset
    from service.screening.ndjson import read_folder
    from service.screening.source import Collector, IssueLog

    ruleset = load_ruleset(ROOT / "rules" / "relieve.yaml", ROOT / "fhir_mappings")
    collector = Collector(ruleset.mapper, AS_OF, IssueLog())
    read_folder(collector, population(patients))
    return [(pid, facts) for pid, _p, facts in collector.screened_patients()]


def _time(function: Any, items: list[Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for item in items:
            function(item)
        best = min(best, time.perf_counter() - started)
    return best / len(items) * 1e6


def measure(patients: int = 2000) -> list[dict[str, Any]]:
    from service.ruleset.evaluate import Evaluator
    from service.ruleset.loader import load_ruleset

    ruleset = load_ruleset(ROOT / "rules" / "relieve.yaml", ROOT / "fhir_mappings")
    everyone = _facts(patients)
    with_records = [
        (pid, f)
        for pid, f in everyone
        if any(f[k] for k in ("conditions", "pain_scores", "treatments", "survival_estimates"))
    ]
    cel, celpy = Evaluator(ruleset, "cel"), Evaluator(ruleset, "celpy")
    # The floor must agree with the engine, or the comparison means nothing: the verdict and
    # every criterion's result, evidence and reason.
    for pid, facts in everyone:
        verdict, results = floor_evaluate(facts, AS_OF)
        engine = cel.evaluate(pid, facts, AS_OF)
        assert verdict == engine.verdict, pid
        for c in engine.criteria:
            assert results[c.id] == (c.result, list(c.evidence), c.reason), (pid, c.id)
    rows = []
    for label, group in (
        ("all patients", everyone),
        ("patients with relevant records", with_records),
    ):
        floor_us = _time(lambda item: floor_evaluate(item[1], AS_OF), group, 5)
        cel_us = _time(lambda item: cel.evaluate(item[0], item[1], AS_OF), group, 3)
        sample = group[: min(len(group), 150)]
        celpy_us = _time(lambda item: celpy.evaluate(item[0], item[1], AS_OF), sample, 1)
        rows.append(
            {
                "group": label,
                "patients": len(group),
                "floor_us": floor_us,
                "cel_us": cel_us,
                "celpy_us": celpy_us,
                "cel_over_floor": cel_us / floor_us,
                "celpy_over_cel": celpy_us / cel_us,
            }
        )
        print(f"  engines {label}: {rows[-1]}", flush=True)
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    notes = [
        "Targets: cel <= 1000 us per patient, and cel_over_floor <= 20.",
        "Per patient: building the CEL activation, 19 derived values and 11 criterion programs, "
        "reasons; floor: the same decisions as plain Python over the same facts. celpy timed "
        "on at most 150 patients.",
    ]

    def plot(axes: Any) -> None:
        labels = [r["group"] for r in rows]
        x = range(len(rows))
        width = 0.25
        for offset, key, name in (
            (-width, "floor_us", "hand-written floor"),
            (0, "cel_us", "cel"),
            (width, "celpy_us", "celpy"),
        ):
            axes.bar([i + offset for i in x], [r[key] for r in rows], width, label=name)
        axes.set_xticks(list(x), labels)
        axes.set_yscale("log")
        axes.set_ylabel("microseconds per patient")
        axes.set_title("RELIEVE evaluation cost per patient")
        axes.legend()

    write_outputs("engines", rows, list(rows[0]), notes, plot)
