"""The mapping file format (``fhir_mappings/<id>.yaml``) and its validation.

A mapping declares *facts*: named inputs for the rules. Each fact is read from one or more
FHIR resource types (sources); each source filters resources (``where``) and extracts a flat
record of typed fields. Every record of a fact has the same keys, always present, never null.
"""

from __future__ import annotations

import re
from pathlib import Path
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.mapping.paths import valuesets_named
from service.yamlfiles import read_model

FieldType = Literal[
    "string",
    "code",
    "date",
    "instant",
    "number",
    "bool",
    "present",
    "in_valueset",
    "one_of",
    "labels",
    "age_min_years",
    "age_max_years",
    "quantity",
    "const",
    "codes",
    "coded",
    "unusable",
    "lookup",
]

Scalar = str | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldDoc(_Strict):
    """One field of a record."""

    type: FieldType
    path: str | None = None
    valueset: str | None = None
    labels: dict[str, str] | None = None
    values: list[str] | None = None
    field: str | None = None
    units: dict[str, float] | None = None
    if_no_unit: str | None = None
    value: Scalar | None = None
    default: Scalar | list[str] | None = None
    map: dict[str, str] | None = Field(
        default=None, description="lookup: the label each value stands for"
    )
    required: bool = Field(
        default=False, description="a record without a value is unusable, and reported"
    )
    range: tuple[float, float] | None = Field(
        default=None, description="number: values outside [low, high] are unusable"
    )
    integer: bool = Field(
        default=False, description="number: a value with a fraction is used, and reported"
    )
    text_pattern: str | None = Field(
        default=None,
        description="number: text matching this regex is read as the number in its first group",
    )
    ignore_unit_case: bool = False
    ignore_case: bool = Field(default=False, description="lookup: values match whatever their case")
    code_values: dict[str, float] | None = Field(
        default=None,
        description="number: a coded value (in 'valueset', when given) stands for this number",
    )
    step: float | None = Field(
        default=None, description="number: only multiples of step (from range's low) are usable"
    )
    description: str = ""

    @model_validator(mode="after")
    def _check_shape(self) -> FieldDoc:
        if self.type == "const":
            if self.value is None:
                raise ValueError("a const field needs 'value'")
            return self
        if self.type in ("present", "unusable") and self.field:
            return self
        if self.type == "unusable":
            raise ValueError("an unusable field needs 'field' (the field whose value it checks)")
        if self.type == "lookup" and not self.map:
            raise ValueError("a lookup field needs 'map' (value: label)")
        if self.map and self.type not in ("lookup", "codes"):
            raise ValueError("'map' goes with a lookup or codes field")
        if self.step is not None and self.step <= 0:
            raise ValueError("step must be positive")
        if self.type == "codes" and not self.valueset:
            raise ValueError("a codes field needs 'valueset'")
        if isinstance(self.default, list) != (self.type == "codes") and self.default is not None:
            raise ValueError("only a codes field has a list default")
        if self.text_pattern is not None:
            try:
                if re.compile(self.text_pattern).groups < 1:
                    raise ValueError("text_pattern needs a group holding the number")
            except re.error as exc:
                raise ValueError(f"text_pattern is not a valid regex ({exc})") from exc
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError("range is [low, high] with low <= high")
        if not self.path:
            raise ValueError(f"a {self.type} field needs 'path'")
        if self.type == "in_valueset" and not self.valueset:
            raise ValueError("an in_valueset field needs 'valueset'")
        if self.type == "one_of" and not self.values:
            raise ValueError("a one_of field needs 'values' (the codes that make it true)")
        if self.type == "labels" and not self.labels:
            raise ValueError("a labels field needs 'labels' (label: valueset-id)")
        if self.type == "quantity" and not self.units:
            raise ValueError("a quantity field needs 'units' (unit code: factor)")
        return self


class WhereDoc(_Strict):
    """A filter a resource must pass to become a record."""

    path: str
    in_: list[str] | None = Field(default=None, alias="in")
    not_in: list[str] | None = None
    in_valueset: list[str] | None = None
    if_missing: Literal["keep", "drop"] | None = None
    search: str | None = Field(
        default=None, description="token search parameter that applies this filter on the server"
    )

    @model_validator(mode="before")
    @classmethod
    def _listify(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("in_valueset"), str):
            data = {**data, "in_valueset": [data["in_valueset"]]}
        return data

    @model_validator(mode="after")
    def _one_test(self) -> WhereDoc:
        given = [x for x in (self.in_, self.not_in, self.in_valueset) if x is not None]
        if len(given) != 1:
            raise ValueError("a where clause needs exactly one of 'in', 'not_in', 'in_valueset'")
        if self.search and (self.not_in is not None or self.if_missing == "keep"):
            raise ValueError(
                "'search' only goes with 'in' or 'in_valueset' that drop missing values"
            )
        return self


class SourceDoc(_Strict):
    resource: str
    patient: str = "subject"
    patient_search: str = Field(
        default="patient", description="search parameter selecting a patient's resources"
    )
    resolve: dict[str, str] = Field(
        default={},
        description="Reference elements that paths may follow with resolve(), and the "
        "resource type each points to (read from the same source, or fetched live)",
    )
    where: list[WhereDoc] = []
    fields: dict[str, FieldDoc]

    @model_validator(mode="after")
    def _presence_targets(self) -> SourceDoc:
        for name, spec in self.fields.items():
            target = self.fields.get(spec.field or "") if spec.field else None
            if spec.field and (target is None or target.field):
                raise ValueError(f"field '{name}': 'field' must name another, non-presence field")
        return self


class FactDoc(_Strict):
    one: bool = False
    description: str = ""
    sources: Annotated[list[SourceDoc], Field(min_length=1)]


class CohortDoc(_Strict):
    """How live runs find candidate patients: resources coded in these value sets."""

    resource: str
    search: str = "code"
    patient_search: str = "patient"
    valuesets: Annotated[list[str], Field(min_length=1)]


class SystemDoc(_Strict):
    """Other ways one code system is written in real data."""

    aliases: list[str] = Field(default=[], description="other URIs for this system")
    alias_patterns: list[str] = Field(
        default=[], description="regexes for whole families of URIs (editions, versions)"
    )
    ignore_in_code: str = Field(
        default="", description="characters this system's codes are compared without"
    )

    @model_validator(mode="after")
    def _patterns_compile(self) -> SystemDoc:
        for pattern in self.alias_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"alias pattern '{pattern}' is not a valid regex ({exc})") from exc
        return self


class CodesDoc(_Strict):
    """How codes in the data are matched against the value sets."""

    trim_whitespace: bool = True
    ignore_trailing_slash: bool = True
    ignore_scheme: bool = Field(default=True, description="http and https name one system")
    systems: dict[str, SystemDoc] = {}


class SkipDoc(_Strict):
    """A Patient this test matches is not screened (and the reason is reported)."""

    path: str
    in_: list[str] = Field(alias="in")
    reason: str


class PatientsDoc(_Strict):
    not_screened: list[SkipDoc] = []


class MappingDoc(_Strict):
    id: str
    version: str
    description: str = ""
    valuesets: list[str] = ["valuesets"]
    codes: CodesDoc = CodesDoc()
    patients: PatientsDoc = PatientsDoc()
    cohort: CohortDoc | None = None
    facts: dict[str, FactDoc]

    @model_validator(mode="after")
    def _uniform_records(self) -> MappingDoc:
        for name, fact in self.facts.items():
            keys = [set(source.fields) for source in fact.sources]
            if any(k != keys[0] for k in keys):
                raise ValueError(f"fact '{name}': every source must define the same fields")
            if fact.one and [s.resource for s in fact.sources] != ["Patient"]:
                raise ValueError(f"fact '{name}': a 'one' fact is read from Patient alone")
            if "ref" in keys[0]:
                raise ValueError(f"fact '{name}': 'ref' is reserved (it is added to every record)")
        if sum(fact.one for fact in self.facts.values()) != 1:
            raise ValueError("exactly one fact must be 'one: true' (the Patient)")
        return self


def read_mapping_doc(path: Path) -> MappingDoc:
    return read_model(path, MappingDoc, "mapping file")


def valueset_references(doc: MappingDoc) -> Iterator[tuple[str, str]]:
    """(where, value set id) for every value set a mapping names: ``in_valueset`` filters,
    fields' ``valueset`` and ``labels``, filters inside paths, the cohort."""
    for fact_name, fact in doc.facts.items():
        for index, source in enumerate(fact.sources):
            where = f"fact '{fact_name}' source {index + 1} ({source.resource})"
            for number, clause in enumerate(source.where, start=1):
                for vs_id in clause.in_valueset or ():
                    yield f"{where} where {number}", vs_id
                for vs_id in valuesets_named(clause.path):
                    yield f"{where} where {number} path", vs_id
            for vs_id in valuesets_named(source.patient):
                yield f"{where} patient", vs_id
            for name, spec in source.fields.items():
                if spec.valueset:
                    yield f"{where} field '{name}'", spec.valueset
                for vs_id in (spec.labels or {}).values():
                    yield f"{where} field '{name}' labels", vs_id
                for vs_id in valuesets_named(spec.path or ""):
                    yield f"{where} field '{name}' path", vs_id
    for rule in doc.patients.not_screened:
        for vs_id in valuesets_named(rule.path):
            yield "patients.not_screened", vs_id
    for vs_id in doc.cohort.valuesets if doc.cohort else ():
        yield "cohort", vs_id
