"""What-if of 10 combinations against one screening, on 10,000 synthetic patients.

``python -m benchmarks.whatif [--patients 10000] [--repeat 3]``: ``prescreen whatif`` with two
grids of 10 combinations and ``prescreen screen`` of the same trial, as whole processes
(start-up included), alternated run by run so that both see the same machine; medians. The
screening runs as one process (``--workers 1``, as what-if does) and with the default for the
folder (two processes on two cores). The load average is recorded before and after each run:
the machine is shared. Writes ``benchmarks/results/whatif.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import (
    AS_OF,
    DATA,
    PRESCREEN,
    folder_stats,
    grouped_bars,
    population,
    timed_process,
    timed_screen,
    write_outputs,
)

TARGET = 2.0  # a what-if of 10 combinations at most twice one screening
LABELS = {  # short names for the plot
    "nrs_threshold x min_survival_months": "what-if\nthresholds",
    "pain_window_days x treatment_window_days": "what-if\nwindows",
    "screen --workers 1": "screen\n--workers 1",
    "screen (default workers)": "screen\ndefault workers",
}
GRIDS = {
    # Thresholds of two criteria (pain-nrs, survival).
    "nrs_threshold x min_survival_months": [
        "nrs_threshold=2,3,4,5,6",
        "min_survival_months=2,3",
    ],
    # Windows read by five criteria (pain-type, pain-nrs, treatment, augmentation-only,
    # systemic-only).
    "pain_window_days x treatment_window_days": [
        "pain_window_days=14,30",
        "treatment_window_days=14,30,60,90,180",
    ],
}


def whatif_once(source: Path, vary: list[str], out: Path) -> dict[str, float]:
    command = [PRESCREEN, "whatif", "--trial", "relieve", "--source", str(source)]
    command += ["--as-of", AS_OF.isoformat(), "--out", str(out), "--no-progress"]
    for item in vary:
        command += ["--vary", item]
    timed = timed_process(command, exit_codes=(0, 1))
    result = json.loads((out / "whatif.json").read_text())
    assert len(result["combinations"]) == 10, "a grid of 10 combinations"
    timed["read_s"] = result["seconds"]["read"]
    timed["evaluate_s"] = result["seconds"]["evaluate"]
    return timed


def screen_once(source: Path, workers: str | None, out: Path) -> dict[str, float]:
    extra = ("--workers", workers) if workers else ()
    return timed_screen(source, "relieve", out, *extra)


def measure(patients: int, repeat: int) -> list[dict[str, Any]]:
    source = population(patients)
    stats = folder_stats(source)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in GRIDS}
    runs["screen --workers 1"], runs["screen (default workers)"] = [], []
    for attempt in range(repeat):
        jobs: list[tuple[str, Any]] = [
            ("screen --workers 1", lambda: screen_once(source, "1", DATA / "out-whatif-s1")),
            ("screen (default workers)", lambda: screen_once(source, None, DATA / "out-whatif-s")),
            *(
                (name, lambda vary=vary: whatif_once(source, vary, DATA / "out-whatif"))
                for name, vary in GRIDS.items()
            ),
        ]
        for name, job in jobs if attempt % 2 == 0 else reversed(jobs):
            runs[name].append(job())
            print(f"  {name}: {runs[name][-1]}", flush=True)

    def median(name: str, key: str = "wall_s") -> float:
        return statistics.median(r[key] for r in runs[name])

    def least(name: str) -> float:
        return min(r["wall_s"] for r in runs[name])

    rows = []
    for name, timings in runs.items():
        row: dict[str, Any] = {
            "run": name,
            "patients": patients,
            "MB": round(stats["bytes"] / 1e6),
            "runs": repeat,
            "wall_s": median(name),
            "wall_s_min": least(name),
            "wall_s_all": sorted(round(r["wall_s"], 2) for r in timings),
            "cpu_s": median(name, "cpu_s"),
            "ratio_to_screen_1": median(name) / median("screen --workers 1"),
            "cpu_ratio_to_screen_1": median(name, "cpu_s") / median("screen --workers 1", "cpu_s"),
            "ratio_to_screen_default": median(name) / median("screen (default workers)"),
            "load_before": statistics.median(r["load_before"] for r in timings),
            "load_after": statistics.median(r["load_after"] for r in timings),
        }
        if name in GRIDS:
            row["read_s"] = statistics.median(r["read_s"] for r in timings)
            row["evaluate_s"] = statistics.median(r["evaluate_s"] for r in timings)
        rows.append(row)
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    columns = [
        "run",
        "patients",
        "MB",
        "runs",
        "wall_s",
        "wall_s_min",
        "ratio_to_screen_1",
        "cpu_ratio_to_screen_1",
        "ratio_to_screen_default",
        "read_s",
        "evaluate_s",
        "cpu_s",
        "load_before",
        "load_after",
        "wall_s_all",
    ]
    notes = [
        f"Target: a what-if of 10 combinations <= {TARGET:g}x one screening "
        "(ratio_to_screen_1: against `screen --workers 1`, one process as what-if is; "
        "ratio_to_screen_default: against the default, two processes for this folder).",
        "wall_s: whole process, start-up included (median; wall_s_min the fastest run, the "
        "least disturbed by the other work on the machine); cpu_s: user + system time of the "
        "run's processes (median); read_s, evaluate_s: what-if's own "
        "timings (reading and mapping once; evaluating the 10 combinations). A screening also "
        "writes its verdicts and FHIR resources, which what-if does not.",
        "load_before, load_after: 1-minute load average around each run (median); the machine "
        f"has {os.cpu_count()} cores and is shared.",
    ]
    write_outputs(
        "whatif",
        rows,
        columns,
        notes,
        grouped_bars(
            [LABELS.get(r["run"], r["run"]) for r in rows],
            rows,
            [("wall_s", "wall time"), ("cpu_s", "CPU time")],
            "What-if (10 combinations) vs one screening, 10k patients",
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    report(measure(args.patients, args.repeat))


if __name__ == "__main__":
    main()
