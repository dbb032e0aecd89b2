"""What a screening run reports: the summary of each trial and of a portfolio, and progress.

Shared by every executor (one process, worker processes, Spark, a live server), which all fill
the same ``ScreeningSummary`` and so write the same summary.json.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Protocol

from service.ruleset.engines import EngineName
from service.ruleset.evaluate import VERDICTS, PatientVerdict
from service.ruleset.loader import RuleSet
from service.screening.source import (
    NOT_SCREENED,
    SOURCE_UNAVAILABLE,
    InputIssue,
    IssueLog,
    ReadStats,
)
from service.screening.tally import Counted, counted


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
    # Resource types the run could not read: {"type", "reason", "criteria"} each.
    sources_unavailable: list[dict[str, Any]] = field(default_factory=list)
    read_seconds: float = 0.0
    evaluate_seconds: float = 0.0
    # The rule parameters set for the run (``--set``), each with the rule file's value; empty
    # for a run that follows the protocol, whose summary.json then has no such key.
    parameters_set: dict[str, dict[str, float | str]] = field(default_factory=dict)

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
        self.count(verdict.verdict, counted(verdict))

    def count(self, verdict: str, ids: Counted) -> None:
        """A verdict counted by ``tally.counted`` (in a worker process, say)."""
        errors, unknown, blocking = ids
        self.verdicts[verdict] += 1
        for criterion in errors:
            self.rule_errors[criterion] += 1
        for criterion in unknown:
            self.unknown[criterion] += 1
        for criterion in blocking:
            self.blocking[criterion] += 1

    def extra_json(self) -> dict[str, Any]:
        """Sections a specialised run adds to summary.json."""
        return {}

    def as_json(self) -> dict[str, Any]:
        # Only when some type was lost: the summary of a complete source stays as it was.
        lost = {"sources_unavailable": self.sources_unavailable} if self.sources_unavailable else {}
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
            **({"parameters_set": self.parameters_set} if self.parameters_set else {}),
            **lost,
            **self.extra_json(),
        }


@dataclass
class PortfolioSummary:
    """Several trials screened in one pass: a summary per trial and the overlap."""

    summaries: list[ScreeningSummary]
    out: Path
    overview: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return max(summary.exit_code for summary in self.summaries)


def report_orphans(summary: ScreeningSummary) -> None:
    """Records of patients with no Patient resource (``summary.orphans``), one issue a fact."""
    for fact, count in summary.orphans.items():
        summary.issues.add(
            InputIssue(
                "*", 0, "no-patient", f"{count} {fact} record(s) name a Patient not in the source"
            )
        )


def report_not_screened(
    not_screened: Iterable[tuple[str, str, str]], summary: ScreeningSummary
) -> None:
    """Patients the mapping says not to screen: in issues.ndjson and summary.json.

    ``not_screened``: (patient id, reason, file:line where its Patient was read), by id.
    """
    for patient_id, reason, where in not_screened:
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


def lost_sources(ruleset: RuleSet, lost: Mapping[str, str]) -> list[dict[str, Any]]:
    """The lost types this trial's mapping reads, each with why and the criteria that read
    them (those criteria are ``unknown`` wherever they would rest on the absence of records)."""
    read = ruleset.mapper.resource_types
    return [
        {
            "type": rtype,
            "reason": why,
            # Patient feeds the patient's own record, which a screened patient has.
            "criteria": [] if rtype == "Patient" else ruleset.criteria_reading(rtype),
        }
        for rtype, why in sorted(lost.items())
        if rtype in read
    ]


def lost_source_issue(entry: Mapping[str, Any]) -> InputIssue:
    if entry["criteria"]:
        cost = (
            "criteria that read them are unknown where they would rest on their absence: "
            + ", ".join(entry["criteria"])
        )
    elif entry["type"] == "Patient":
        cost = "a patient whose Patient record is missing is not screened"
    else:
        cost = "no criterion reads them"
    return InputIssue(
        "*",
        0,
        SOURCE_UNAVAILABLE,
        f"{entry['type']} records are not available from the server ({entry['reason']}); {cost}",
    )


def report_lost_sources(
    issues: IssueLog, ruleset: RuleSet, lost: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Lost types: one ``source-unavailable`` issue each (reported before the problems of the
    lines, as a source's own problems are); returns summary.json's section."""
    entries = lost_sources(ruleset, lost)
    for entry in entries:
        issues.add(lost_source_issue(entry))
    return entries


def report_lost_once(summary: ScreeningSummary, ruleset: RuleSet, lost: Mapping[str, str]) -> None:
    """For a live run, which meets a lost type while it goes: the first time, its
    ``source-unavailable`` issue and its entry of summary.json's section."""
    reported = {entry["type"] for entry in summary.sources_unavailable}
    for entry in lost_sources(ruleset, lost):
        if entry["type"] not in reported:
            summary.issues.add(lost_source_issue(entry))
            summary.sources_unavailable.append(entry)
