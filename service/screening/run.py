"""The offline screening run: an NDJSON folder in, verdicts and FHIR resources out."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Protocol

from service.research import SUBJECT_STATUSES, research_study, research_subject
from service.ruleset.engines import EngineName
from service.ruleset.evaluate import VERDICTS, Evaluator, PatientVerdict
from service.ruleset.loader import RuleSet
from service.screening import output
from service.screening.inmemory import evaluate_reporting
from service.screening.source import (
    NOT_SCREENED,
    Collector,
    InputIssue,
    IssueLog,
    ReadStats,
    discover,
    reading_order,
)


class ProgressSink(Protocol):
    """Where a run reports progress; ``task`` returns a function taking the amount done."""

    def task(self, description: str, total: int, unit: str = "") -> Callable[[int], None]: ...


@dataclass
class ScreeningSummary:
    trial: str
    ruleset_version: str
    engine: EngineName
    as_of: date
    source: Path
    out: Path
    stats: ReadStats
    issues: IssueLog
    verdicts: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)
    blocking: Counter[str] = field(default_factory=Counter)
    rule_errors: Counter[str] = field(default_factory=Counter)
    orphans: Counter[str] = field(default_factory=Counter)
    not_screened: dict[str, str] = field(default_factory=dict)
    read_seconds: float = 0.0
    evaluate_seconds: float = 0.0

    @property
    def patients(self) -> int:
        return sum(self.verdicts.values())

    @property
    def exit_code(self) -> int:
        """0: clean; 1: finished, but some input or some rule could not be used.

        Patients the mapping says not to screen (inactive, merged) are reported, but they are
        not unusable input.
        """
        doubtful = self.issues.total - self.issues.counts.get(NOT_SCREENED, 0)
        return 1 if doubtful or sum(self.rule_errors.values()) else 0

    def tally(self, verdict: PatientVerdict) -> None:
        self.verdicts[verdict.verdict] += 1
        for c in verdict.criteria:
            if c.error:
                self.rule_errors[c.id] += 1
            elif (
                c.result == "unknown" and not c.manual and verdict.verdict == "potential-candidate"
            ):
                # What keeps potential candidates from being candidates: data to go and find.
                self.unknown[c.id] += 1
            if (c.kind == "inclusion" and c.result == "not_met") or (
                c.kind == "exclusion" and c.result == "met"
            ):
                self.blocking[c.id] += 1

    def extra_json(self) -> dict[str, Any]:
        """Sections a specialised run adds to summary.json."""
        return {}

    def as_json(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "ruleset_version": self.ruleset_version,
            "engine": self.engine,
            "as_of": self.as_of.isoformat(),
            "patients": self.patients,
            "verdicts": {v: self.verdicts.get(v, 0) for v in VERDICTS},
            "unknown_in_potential_candidates": dict(self.unknown.most_common()),
            "excluding_by_criterion": dict(self.blocking.most_common()),
            "rule_errors_by_criterion": dict(self.rule_errors.most_common()),
            "input": {
                "files": self.stats.files,
                "lines": self.stats.lines,
                "parsed": self.stats.parsed,
                "skipped_unneeded_type": self.stats.skipped_type,
                "skipped_no_relevant_code": self.stats.skipped_prefilter,
                "records": self.stats.records,
            },
            "issues": {"total": self.issues.total, "by_kind": dict(self.issues.counts)},
            "records_without_patient": dict(self.orphans),
            "not_screened": [
                {"patient": f"Patient/{pid}", "reason": reason}
                for pid, reason in sorted(self.not_screened.items())
            ],
            "seconds": {
                "read": round(self.read_seconds, 3),
                "evaluate": round(self.evaluate_seconds, 3),
            },
            "exit_code": self.exit_code,
            **self.extra_json(),
        }


def screen_folder(
    ruleset: RuleSet,
    source: Path,
    as_of: date,
    out: Path,
    *,
    engine: EngineName = "cel",
    subject_identifier_system: str,
    progress: ProgressSink | None = None,
) -> ScreeningSummary:
    files = reading_order(discover(source), ruleset.mapper)
    evaluator = Evaluator(ruleset, engine, memoize=True)

    with output.OutputSet(out) as outputs:
        issue_file = outputs.ndjson(output.ISSUES)

        def record_issue(issue: InputIssue) -> None:
            issue_file.write(issue.as_json())

        issues = IssueLog(sink=record_issue)
        collector = Collector(ruleset.mapper, as_of, issues)
        summary = ScreeningSummary(
            ruleset.id, ruleset.version, engine, as_of, source, out, collector.stats, issues
        )
        started = time.perf_counter()
        _read_all(collector, files, progress)
        summary.read_seconds = time.perf_counter() - started
        summary.orphans = collector.orphans()
        for fact, count in summary.orphans.items():
            issues.add(
                InputIssue(
                    "*",
                    0,
                    "no-patient",
                    f"{count} {fact} record(s) name a Patient not in the source",
                )
            )
        report_not_screened(collector, summary)

        started = time.perf_counter()
        screened = [pid for pid, data in collector.patients.items() if data.patient is not None]
        advance = progress.task("Screening patients", len(screened)) if progress else None

        def contracts() -> Iterator[dict[str, Any]]:
            for done, (patient_id, _patient, facts) in enumerate(collector.screened_patients(), 1):
                verdict = evaluate_reporting(evaluator, patient_id, facts, as_of, issues)
                summary.tally(verdict)
                yield verdict.as_contract(ruleset, as_of)
                if advance is not None and (done % 256 == 0 or done == len(screened)):
                    advance(done)

        write_results(ruleset, contracts(), as_of, outputs, subject_identifier_system)
        summary.evaluate_seconds = time.perf_counter() - started
        outputs.json(output.SUMMARY, summary.as_json())
    return summary


def report_not_screened(collector: Collector, summary: ScreeningSummary) -> None:
    """Patients the mapping says not to screen: in issues.ndjson and summary.json."""
    for patient_id, reason, where in collector.not_screened():
        summary.not_screened[patient_id] = reason
        file, _, line = where.rpartition(":")
        summary.issues.add(
            InputIssue(
                file,
                int(line) if line.isdigit() else 0,
                NOT_SCREENED,
                f"Patient/{patient_id} is not screened: {reason}",
            )
        )


def write_results(
    ruleset: RuleSet,
    contracts: Iterable[dict[str, Any]],
    as_of: date,
    outputs: output.OutputSet,
    subject_identifier_system: str,
) -> None:
    """verdicts.ndjson, ResearchSubject.ndjson and ResearchStudy.ndjson from verdict lines."""
    verdict_file = outputs.ndjson(output.VERDICTS)
    subject_file = outputs.ndjson(output.SUBJECTS)
    for contract in contracts:
        verdict_file.write(contract)
        if contract["verdict"] in SUBJECT_STATUSES:
            patient_id = contract["patient"].removeprefix("Patient/")
            subject_file.write(
                research_subject(
                    ruleset, patient_id, contract["verdict"], as_of, subject_identifier_system
                )
            )
    outputs.ndjson(output.STUDIES).write(research_study(ruleset))


def _read_all(collector: Collector, files: list[Any], progress: ProgressSink | None) -> None:
    total = sum(f.size for f in files)
    advance = progress.task("Reading NDJSON", total, unit="bytes") if progress else None
    offset = 0
    for file in files:
        size = file.size

        def report(done_in_file: int, base: int = offset, size: int = size) -> None:
            if advance is not None:
                advance(base + min(done_in_file, size))

        collector.read_file(file, report if advance else None)
        offset += size
