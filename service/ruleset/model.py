"""The rule-set file format (``rules/<id>.yaml``), as pydantic models.

Structural problems (a missing key, a wrong type) are reported by pydantic with their location;
semantic checks (CEL syntax, unknown names, duplicate ids) live in ``loader``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Result = Literal["met", "not_met", "unknown"]
Kind = Literal["inclusion", "exclusion"]

# R4 ResearchStudy.status codes (http://hl7.org/fhir/research-study-status).
StudyStatus = Literal[
    "active",
    "administratively-completed",
    "approved",
    "closed-to-accrual",
    "closed-to-accrual-and-intervention",
    "completed",
    "disapproved",
    "in-review",
    "temporarily-closed-to-accrual",
    "temporarily-closed-to-accrual-and-intervention",
    "withdrawn",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TrialDoc(_Strict):
    """The trial, as written into the ResearchStudy and shown to coordinators."""

    nct_id: str = Field(
        pattern=r"^NCT\d{8}$", description="the ClinicalTrials.gov identifier (NCT and 8 digits)"
    )
    identifier_system: str = Field(description="ResearchStudy.identifier.system for the NCT id")
    acronym: str = Field(description="the short name on cards and pages")
    title: str = Field(description="the trial's official title")
    sponsor: str = Field(description="the sponsor, ResearchStudy.sponsor's display")
    status: StudyStatus = Field(default="active", description="the R4 ResearchStudy.status code")
    description: str = Field(default="", description="ResearchStudy.description")
    conditions: list[str] = Field(default=[], description="ResearchStudy.condition texts")
    url: str = Field(default="", description="the trial's public page (CDS Hooks cards link it)")


class ParameterDoc(_Strict):
    """A threshold, window or option; rules read it as ``params.<name>``."""

    value: float | str
    window: bool = Field(
        default=False,
        description="a number of days before as_of; rules also get windows.<name>, its first day",
    )
    one_of: list[str] | None = None
    min: float | None = Field(
        default=None, description="the lowest value a run may set (--set, whatif --vary), inclusive"
    )
    max: float | None = Field(
        default=None,
        description="the highest value a run may set (--set, whatif --vary), inclusive",
    )
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> ParameterDoc:
        if self.window and (isinstance(self.value, str) or self.value < 0):
            raise ValueError("a window is a non-negative number of days")
        if self.one_of is not None and self.value not in self.one_of:
            raise ValueError(f"value must be one of {self.one_of}")
        self._check_range()
        return self

    def _check_range(self) -> None:
        """``min``/``max`` bound a number, and hold the rule file's own value."""
        if self.min is None and self.max is None:
            return
        if isinstance(self.value, str):
            raise ValueError("min and max bound a number, not a text value")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        if (self.min is not None and self.value < self.min) or (
            self.max is not None and self.value > self.max
        ):
            raise ValueError(f"value {self.value:g} lies outside min/max")

    @property
    def is_number(self) -> bool:
        return not isinstance(self.value, str)


_EVIDENCE = "CEL: the list of 'Type/id' references (every record's ref) that support the result"
_ARGS = "CEL expressions by name, filling the reason's {name} placeholders"
_REASON = (
    "the explanation shown with the result: text with {placeholders} from args, the "
    "parameters, as_of and <window>_start"
)


class CaseDoc(_Strict):
    """One outcome of a criterion: when ``if`` holds, the criterion has ``result``."""

    if_: str = Field(alias="if", description="CEL, true when this case decides the criterion")
    result: Result = Field(description="the criterion's result when this case holds")
    reason: str = Field(description=_REASON)
    evidence: str = Field(default="[]", description=_EVIDENCE)
    args: dict[str, str] = Field(default={}, description=_ARGS)


class OtherwiseDoc(_Strict):
    """The outcome when no case holds."""

    result: Result = Field(description="the criterion's result when no case holds")
    reason: str = Field(description=_REASON)
    evidence: str = Field(default="[]", description=_EVIDENCE)
    args: dict[str, str] = Field(default={}, description=_ARGS)


class CriterionDoc(_Strict):
    """One eligibility criterion and how its result is decided."""

    id: str = Field(
        pattern=r"^[a-z][a-z0-9-]*$",
        description="the criterion's name in every output (lower case, digits, hyphens)",
    )
    kind: Kind = Field(
        description="inclusion (not_met makes a patient ineligible) or exclusion (met does)"
    )
    text: str = Field(description="the criterion as the trial states it")
    title: str = Field(
        default="",
        max_length=60,
        description="a short name for charts and lists (the overview's funnel); empty: the "
        "criterion's id",
    )
    manual: bool = Field(
        default=False,
        description="decided by a clinician: always unknown, and no bar to a candidate verdict",
    )
    reason: str = Field(default="requires clinician review", description="manual: the reason shown")
    missing: CaseDoc | None = Field(
        default=None, description="evaluated first: the data is absent, and what that means"
    )
    cases: list[CaseDoc] = Field(
        default=[], description="in order: the first whose if holds decides the criterion"
    )
    otherwise: OtherwiseDoc | None = Field(
        default=None, description="the outcome when neither missing nor a case holds"
    )
    note: str = Field(default="", description="for the reader: choices made, sources")

    @model_validator(mode="after")
    def _shape(self) -> CriterionDoc:
        if self.manual:
            if self.cases or self.missing or self.otherwise:
                raise ValueError("a manual criterion has no cases, missing or otherwise")
        elif self.otherwise is None:
            raise ValueError("a criterion needs 'otherwise' (or 'manual: true')")
        return self


class RuleSetDoc(_Strict):
    """A rule file: one trial's criteria as data."""

    id: str = Field(
        pattern=r"^[a-z][a-z0-9-]*$",
        description="the trial's name on the command line and in every output (the file is "
        "rules/<id>.yaml)",
    )
    version: str = Field(description="written into every verdict and ResearchSubject")
    mapping: str = Field(description="the mapping the rules read: fhir_mappings/<mapping>.yaml")
    trial: TrialDoc = Field(description="the trial itself")
    parameters: dict[str, ParameterDoc] = Field(
        default={},
        description="thresholds, windows and options by name: CEL reads params.<name>",
    )
    derived: dict[str, str] = Field(
        default={},
        description="CEL values by name, computed once per patient in order; later values and "
        "criteria read them by name",
    )
    criteria: list[CriterionDoc] = Field(min_length=1, description="the criteria, in order")
