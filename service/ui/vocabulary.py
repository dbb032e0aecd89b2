"""Words the pages use for statuses and decisions.

A decision is a FHIR R4 ResearchSubject status (research-subject-status); the labels say what a
coordinator means by it. R4 has no "contacted": a patient who has been contacted and is being
assessed is ``screening``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.api.decisions import DECISIONS
from service.errors import ConfigError
from service.ruleset.loader import RuleSet
from service.state.worklist import FLAGGED
from service.yamlfiles import problems, read_yaml

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

# Statuses the worklist shows by default: the ones where a person still has something to do
# (a flagged patient to review, a contacted one to follow up, one to register).
OPEN_STATUSES = (*FLAGGED, "eligible", "screening", "pending-on-study")
ENROLLED = "on-study"  # leaving it needs a confirmation

RESULT_LABELS = {"met": "met", "not_met": "not met", "unknown": "unknown"}


def status_label(status: str) -> str:
    return STATUS_LABELS.get(status, status)


class _Closing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    criteria: bool = False
    reasons: list[str] = Field(min_length=1)


class DecisionReasons(BaseModel):
    """The reasons a person chooses from (``decision_reasons.yaml``): for each closing status,
    and for a flag for review of a patient the rules exclude."""

    model_config = ConfigDict(extra="forbid")
    closing: dict[str, _Closing] = Field(min_length=1)
    review: list[str] = Field(min_length=1)

    @field_validator("closing")
    @classmethod
    def _statuses_known(cls, value: dict[str, _Closing]) -> dict[str, _Closing]:
        unknown = sorted(set(value) - set(DECISIONS))
        if unknown:
            raise ValueError(f"not a ResearchSubject status a person decides: {', '.join(unknown)}")
        return value

    @classmethod
    def load(cls, path: Path) -> DecisionReasons:
        raw = read_yaml(path, "decision reasons")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"{path}: {problems(exc)}") from exc

    def closes(self, status: str) -> bool:
        return status in self.closing

    def general(self, status: str) -> list[str]:
        """The reasons of a closing status that name no criterion (a bulk change offers these)."""
        found = self.closing.get(status)
        return list(found.reasons) if found else []

    def for_status(self, status: str, ruleset: RuleSet) -> list[str]:
        """The reasons offered for ``status`` in this trial ([] if it needs none)."""
        found = self.closing.get(status)
        if found is None:
            return []
        criteria = [
            f"{'Meets exclusion' if c.kind == 'exclusion' else 'Does not meet'}: {c.text}"
            for c in ruleset.criteria
        ]
        return (criteria if found.criteria else []) + list(found.reasons)
