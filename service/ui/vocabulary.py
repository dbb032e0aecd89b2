"""Words the pages use for statuses and decisions.

A decision is a FHIR R4 ResearchSubject status (research-subject-status); the labels say what a
coordinator means by it. R4 has no "contacted": a patient who has been contacted and is being
assessed is ``screening``.
"""

from __future__ import annotations

from service.api.decisions import GENERAL_REASONS
from service.ruleset.loader import RuleSet
from service.state.worklist import FLAGGED

STATUS_LABELS = {
    "candidate": "Candidate",
    "potential-candidate": "Potential candidate",
    "ineligible": "Ineligible",
    "eligible": "Eligible",
    "screening": "Contacted, screening",
    "pending-on-study": "Pre-registered",
    "on-study": "Enrolled",
    "not-registered": "Not registered",
    "withdrawn": "Withdrawn",
}

# What a coordinator may record, in the order offered.
DECISION_CHOICES = (
    "eligible",
    "ineligible",
    "screening",
    "pending-on-study",
    "on-study",
    "not-registered",
    "withdrawn",
)

# Statuses the worklist shows by default: the ones waiting for a person.
OPEN_STATUSES = FLAGGED

RESULT_LABELS = {"met": "met", "not_met": "not met", "unknown": "unknown"}


def status_label(status: str) -> str:
    return STATUS_LABELS.get(status, status)


def ineligible_reasons(ruleset: RuleSet) -> list[str]:
    """Each inclusion not met, each exclusion met, then the reasons no rule set states."""
    reasons = [
        f"{'Meets exclusion' if c.kind == 'exclusion' else 'Does not meet'}: {c.text}"
        for c in ruleset.criteria
    ]
    return reasons + list(GENERAL_REASONS)
