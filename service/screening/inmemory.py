"""Screening resources already in memory (fetched from a server, a prefetch, a rule test):
the same mapper and evaluator as the offline run, without files."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

from service.ruleset.evaluate import Evaluator, PatientVerdict
from service.screening.source import (
    NO_NOTES,
    NOT_SCREENED,
    Collector,
    InputIssue,
    IssueLog,
    SourceNotes,
)


def evaluate_resources(
    evaluator: Evaluator,
    resources: Iterable[dict[str, Any]],
    as_of: date,
    *,
    issues: IssueLog | None = None,
    only: set[str] | None = None,
    not_screened: dict[str, str] | None = None,
    notes: SourceNotes = NO_NOTES,
    as_lines: bool = False,
) -> list[PatientVerdict]:
    """Verdicts of the patients among ``resources`` (restricted to ``only`` when given).

    Each resource is located in issue reports by its reference, as it has no file and line.
    Patients the mapping says not to screen get no verdict; ``not_screened`` collects them.
    ``notes.lost``: resource types the fetch could not read (criteria never rest on their
    absence). ``as_lines``: resources holding none of the codes their mapping looks for are
    skipped, as an NDJSON line is (``Collector.read_resources``).
    """
    log = issues or IssueLog()
    collector = Collector(evaluator.ruleset.mapper, as_of, log, notes)
    collector.read_resources(resources, as_lines=as_lines)
    for pid, reason, where in collector.not_screened():
        if only is None or pid in only:
            log.add(InputIssue(where, 0, NOT_SCREENED, f"Patient/{pid} is not screened: {reason}"))
            if not_screened is not None:
                not_screened[pid] = reason
    return [
        evaluate_reporting(evaluator, patient_id, facts, as_of, log)
        for patient_id, _patient, facts in collector.screened_patients()
        if only is None or patient_id in only
    ]


def evaluate_reporting(
    evaluator: Evaluator, patient_id: str, facts: dict[str, Any], as_of: date, issues: IssueLog
) -> PatientVerdict:
    """Evaluate one patient; a criterion that could not be evaluated is also an input issue.

    An unexpected error costs this patient's criteria (unknown, "could not be evaluated"),
    never the run.
    """
    verdict = evaluator.evaluate_safely(patient_id, facts, as_of)
    for criterion in verdict.criteria:
        if criterion.error:
            issues.add(
                InputIssue(
                    f"Patient/{patient_id}",
                    0,
                    "evaluation-error",
                    f"criterion '{criterion.id}' could not be evaluated"
                    + (f": {criterion.detail}" if criterion.detail else ""),
                )
            )
    return verdict
