"""What-if: the verdicts of one trial under other values of its parameters, on one reading.

The source is read and mapped once; the facts stay in memory and every combination of the
values given (``--vary name=v1,v2``) is evaluated on them, each with a rule set of its own
(``overrides.with_overrides``) and so an evaluator, and an evaluation cache, of its own. The
combination of the rule file's own values is always evaluated: its verdicts are those of a plain
screening, and each row says which patients it gains or loses against them.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from service.errors import ConfigError
from service.ruleset.dependencies import dependent_criteria, facts_read, restricted
from service.ruleset.engines import EngineName
from service.ruleset.evaluate import VERDICTS, CriterionResult, Evaluator, decide
from service.ruleset.gaps import GAPS
from service.ruleset.loader import RuleSet
from service.ruleset.overrides import (
    Value,
    parameter_value,
    protocol_values,
    split_assignment,
    value_text,
    with_overrides,
)
from service.screening.facts import Facts, doubtful, read_source, report_reading, screened_facts
from service.screening.funnel import rules_out
from service.screening.inmemory import evaluate_reporting
from service.screening.run import folder_notes
from service.screening.source import Collector, IssueLog, ReadStats
from service.screening.summary import ProgressSink

WHATIF = "whatif.json"
PLOT = "whatif.png"
FLAGGED = ("candidate", "potential-candidate")  # the verdicts whose gains and losses are listed
MAX_COMBINATIONS = 1_000  # a grid this large is a mistake more likely than a question


@dataclass(frozen=True)
class Varied:
    """A parameter and the values to try, checked against its declaration."""

    name: str
    values: tuple[Value, ...]


def parse_vary(ruleset: RuleSet, texts: Sequence[str]) -> list[Varied]:
    """``--vary name=v1,v2,...`` (repeatable): each value checked as ``--set`` checks it."""
    varied: list[Varied] = []
    for text in texts:
        trial, name, values_text = split_assignment(text, "--vary")
        if trial is not None and trial != ruleset.id:
            raise ConfigError(f"--vary {trial}.{name}: the trial is '{ruleset.id}'")
        if any(v.name == name for v in varied):
            raise ConfigError(f"--vary {name}: given twice; list every value in one --vary")
        parts = [part.strip() for part in values_text.split(",") if part.strip()]
        if not parts:
            raise ConfigError(f"--vary {name}: no values (--vary {name}=v1,v2,...)")
        values = tuple(
            dict.fromkeys(parameter_value(ruleset, name, part, "--vary") for part in parts)
        )
        varied.append(Varied(name, values))
    if not varied:
        raise ConfigError("give at least one --vary NAME=V1,V2,...")
    combinations = 1
    for v in varied:
        combinations *= len(v.values)
    if combinations > MAX_COMBINATIONS:
        raise ConfigError(
            f"--vary: {combinations} combinations; at most {MAX_COMBINATIONS} in one run"
        )
    return varied


@dataclass
class Row:
    """One combination of values and the verdict of every patient under it."""

    values: dict[str, Value]
    own_values: bool
    verdicts: dict[str, str] = field(default_factory=dict)  # patient id -> verdict
    # Patients with a criterion that could not be evaluated (for a patient ruled out whatever
    # the varied values, among the criteria that do not read them).
    rule_errors: int = 0
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        found = Counter(self.verdicts.values())
        return {verdict: found.get(verdict, 0) for verdict in VERDICTS}

    def with_verdict(self, verdict: str) -> list[str]:
        return sorted(pid for pid, v in self.verdicts.items() if v == verdict)


@dataclass
class WhatIf:
    """The result: one row per combination (the rule file's own values flagged)."""

    ruleset: RuleSet
    as_of: date
    varied: list[Varied]
    rows: list[Row]
    stats: ReadStats
    issues: IssueLog
    read_seconds: float

    @property
    def own(self) -> Row:
        return next(row for row in self.rows if row.own_values)

    @property
    def exit_code(self) -> int:
        """As a screening's: 1 when some input or some rule evaluation could not be used."""
        return 1 if doubtful(self.issues) or any(r.rule_errors for r in self.rows) else 0

    def as_json(self) -> dict[str, Any]:
        own = self.own
        return {
            "trial": self.ruleset.id,
            "ruleset_version": self.ruleset.version,
            "as_of": self.as_of.isoformat(),
            "patients": len(own.verdicts),
            "varied": {v.name: [json_value(x) for x in v.values] for v in self.varied},
            "own_values": {k: json_value(x) for k, x in own.values.items()},
            "combinations": [self._row_json(row, own) for row in self.rows],
            "input": {
                "files": self.stats.files,
                "lines": self.stats.lines,
                "parsed": self.stats.parsed,
                "records": self.stats.records,
            },
            "issues": {"total": self.issues.total, "by_kind": dict(self.issues.counts)},
            "seconds": {
                "read": round(self.read_seconds, 3),
                "evaluate": round(sum(r.seconds for r in self.rows), 3),
            },
            "exit_code": self.exit_code,
        }

    @staticmethod
    def _row_json(row: Row, own: Row) -> dict[str, Any]:
        def refs(ids: list[str]) -> list[str]:
            return [f"Patient/{pid}" for pid in ids]

        gained: dict[str, list[str]] = {}
        lost: dict[str, list[str]] = {}
        for verdict in FLAGGED:
            now, before = set(row.with_verdict(verdict)), set(own.with_verdict(verdict))
            gained[verdict] = refs(sorted(now - before))
            lost[verdict] = refs(sorted(before - now))
        return {
            "parameters": {k: json_value(x) for k, x in row.values.items()},
            "own_values": row.own_values,
            "verdicts": row.counts(),
            "candidates": refs(row.with_verdict("candidate")),
            "potential_candidates": refs(row.with_verdict("potential-candidate")),
            "gained": gained,
            "lost": lost,
            "rule_errors": row.rule_errors,
        }


def json_value(value: Value) -> int | float | str:
    """A number as JSON shows it best: 4 rather than 4.0."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def combinations(ruleset: RuleSet, varied: list[Varied]) -> list[tuple[dict[str, Value], bool]]:
    """Every combination of the values, in the order given (the first parameter varies
    slowest), each with whether it is the rule file's own; the rule file's own values come
    first when the grid lacks them."""
    names = [v.name for v in varied]
    own = protocol_values(ruleset, names)
    grid = [
        dict(zip(names, values, strict=True))
        for values in itertools.product(*(v.values for v in varied))
    ]
    rows = [(values, values == own) for values in grid]
    if own not in grid:
        rows.insert(0, (own, True))
    return rows


def evaluate_combinations(
    ruleset: RuleSet,
    varied: list[Varied],
    patients: list[tuple[str, Facts]],
    as_of: date,
    *,
    engine: EngineName = "cel",
    issues: IssueLog | None = None,
    progress: ProgressSink | None = None,
) -> list[Row]:
    """Each combination's verdicts on facts read once.

    The rule file's own values are evaluated first, for every patient, exactly as a screening
    evaluates them (a criterion that could not be evaluated is reported to ``issues``). The
    criteria that read none of the varied parameters, on any path (``dependencies``), give the
    same results under every combination: a patient one of them rules out is ruled out under
    all, and for the others each combination evaluates only the criteria that may change (with
    the derived values they read), in a rule set, an evaluator and a cache of its own, and
    decides the verdict from those and the unchanged ones.
    """
    grid = combinations(ruleset, varied)
    advance = progress.task("Evaluating combinations", len(grid)) if progress else None
    dependent = dependent_criteria(ruleset, (v.name for v in varied))
    rows = [Row(values, own) for values, own in grid]
    own = next(row for row in rows if row.own_values)
    started = time.perf_counter()
    evaluator = Evaluator(ruleset, engine, memoize=True)
    log = issues if issues is not None else IssueLog(keep=0)
    unchanged: dict[str, tuple[CriterionResult, ...]] = {}  # patients not ruled out by them
    errors: set[str] = set()  # a criterion that does not change could not be evaluated
    for patient_id, facts in patients:
        verdict = evaluate_reporting(evaluator, patient_id, facts, as_of, log)
        own.verdicts[patient_id] = verdict.verdict
        own.rule_errors += any(c.error for c in verdict.criteria)
        kept = tuple(c for c in verdict.criteria if c.id not in dependent)
        if any(c.error for c in kept):
            errors.add(patient_id)
        if not any(rules_out(c.kind, c.result) for c in kept):
            unchanged[patient_id] = kept
    undecided = [(pid, facts) for pid, facts in patients if pid in unchanged]
    own.seconds = time.perf_counter() - started
    done = 1
    if advance is not None:
        advance(done)
    for row in rows:
        if row is own:
            continue
        started = time.perf_counter()
        reduced = restricted(with_overrides(ruleset, row.values), dependent, engine)
        partial = Evaluator(reduced, engine, memoize=True)
        read = facts_read(reduced)  # and only the facts those criteria read
        failed = set(errors)
        row.verdicts = dict.fromkeys(own.verdicts, "ineligible")
        for patient_id, facts in undecided:
            # The facts those criteria read, and what the source says may be missing of them.
            needed = {name: value for name, value in facts.items() if name in read or name == GAPS}
            changed = partial.evaluate_safely(patient_id, needed, as_of).criteria
            row.verdicts[patient_id] = decide((*unchanged[patient_id], *changed))
            if any(c.error for c in changed):
                failed.add(patient_id)
        row.rule_errors = len(failed)
        row.seconds = time.perf_counter() - started
        done += 1
        if advance is not None:
            advance(done)
    return rows


def what_if(
    ruleset: RuleSet,
    varied: list[Varied],
    source: Path,
    as_of: date,
    *,
    engine: EngineName = "cel",
    progress: ProgressSink | None = None,
) -> WhatIf:
    """Read ``source`` once, then evaluate every combination."""
    issues = IssueLog()
    # A folder a Bulk export wrote may say it lacks types: judged as a screening judges it.
    collector = Collector(ruleset.mapper, as_of, issues, folder_notes(source))
    stats, read_seconds = read_source([collector], source, progress)
    report_reading(collector, issues)
    patients = screened_facts(collector)
    rows = evaluate_combinations(
        ruleset, varied, patients, as_of, engine=engine, issues=issues, progress=progress
    )
    return WhatIf(ruleset, as_of, varied, rows, stats, issues, read_seconds)


def row_label(values: dict[str, Value]) -> str:
    return ", ".join(f"{name}={value_text(value)}" for name, value in values.items())
