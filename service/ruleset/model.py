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
    nct_id: str = Field(pattern=r"^NCT\d{8}$")
    identifier_system: str = Field(description="ResearchStudy.identifier.system for the NCT id")
    acronym: str
    title: str
    sponsor: str
    status: StudyStatus = "active"
    description: str = ""
    conditions: list[str] = []
    url: str = ""


class ParameterDoc(_Strict):
    """A threshold, window or option; rules read it as ``params.<name>``."""

    value: float | str
    window: bool = Field(
        default=False,
        description="a number of days before as_of; rules also get windows.<name>, its first day",
    )
    one_of: list[str] | None = None
    min: float | None = Field(
        default=None, description="the lowest value a run may set (``--set``), inclusive"
    )
    max: float | None = Field(
        default=None, description="the highest value a run may set (``--set``), inclusive"
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


class CaseDoc(_Strict):
    """One outcome of a criterion: when ``if`` holds, the criterion has ``result``."""

    if_: str = Field(alias="if")
    result: Result
    reason: str
    evidence: str = "[]"
    args: dict[str, str] = {}


class OtherwiseDoc(_Strict):
    """The outcome when no case holds."""

    result: Result
    reason: str
    evidence: str = "[]"
    args: dict[str, str] = {}


class CriterionDoc(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    kind: Kind
    text: str
    manual: bool = False
    reason: str = "requires clinician review"
    missing: CaseDoc | None = Field(
        default=None, description="evaluated first: the data is absent, and what that means"
    )
    cases: list[CaseDoc] = []
    otherwise: OtherwiseDoc | None = None
    note: str = ""

    @model_validator(mode="after")
    def _shape(self) -> CriterionDoc:
        if self.manual:
            if self.cases or self.missing or self.otherwise:
                raise ValueError("a manual criterion has no cases, missing or otherwise")
        elif self.otherwise is None:
            raise ValueError("a criterion needs 'otherwise' (or 'manual: true')")
        return self


class RuleSetDoc(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    version: str
    mapping: str
    trial: TrialDoc
    parameters: dict[str, ParameterDoc] = {}
    derived: dict[str, str] = {}
    criteria: list[CriterionDoc] = Field(min_length=1)
