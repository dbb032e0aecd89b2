"""Screening resources already in memory (fetched from a server, a prefetch, a rule test):
the same mapper and evaluator as the offline run, without files."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

from service.ruleset.evaluate import Evaluator, PatientVerdict
from service.screening.source import Collector, IssueLog


def evaluate_resources(
    evaluator: Evaluator,
    resources: Iterable[dict[str, Any]],
    as_of: date,
    *,
    issues: IssueLog | None = None,
    only: set[str] | None = None,
) -> list[PatientVerdict]:
    """Verdicts of the patients among ``resources`` (restricted to ``only`` when given).

    Each resource is located in issue reports by its reference, as it has no file and line.
    """
    collector = Collector(evaluator.ruleset.mapper, as_of, issues or IssueLog())
    for resource in resources:
        collector.add_resource(
            resource, f"fhir:{resource.get('resourceType')}/{resource.get('id')}", 0
        )
    return [
        evaluator.evaluate(patient_id, facts, as_of)
        for patient_id, _patient, facts in collector.screened_patients()
        if only is None or patient_id in only
    ]
