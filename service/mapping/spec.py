"""The mapping file format (``fhir_mappings/<id>.yaml``) and its validation.

A mapping declares *facts*: named inputs for the rules. Each fact is read from one or more
FHIR resource types (sources); each source filters resources (``where``) and extracts a flat
record of typed fields. Every record of a fact has the same keys, always present, never null.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
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

# What each field type holds (the reference in docs/reference/ is generated from it; every type
# must have its line).
FIELD_TYPE_MEANINGS: dict[str, str] = {
    "string": "the text at the path",
    "code": "the first code at the path (in valueset, when given)",
    "date": "YYYY-MM-DD as written at the source (a partial date: its first day)",
    "instant": "a UTC instant YYYY-MM-DDTHH:MM:SSZ, for ordering",
    "number": "a double; options range, step, integer, required, text_pattern, code_values",
    "bool": "true only for JSON true (text 'true' is read, and reported)",
    "present": "the path has a value, or (with field) that field's value was usable",
    "in_valueset": "some coding at the path is in valueset",
    "one_of": "the value at the path is one of values",
    "labels": "the labels whose value sets hold a coding at the path (a list)",
    "age_min_years": "the youngest age a (partial) birth date gives on as_of (-1: none)",
    "age_max_years": "the oldest age a (partial) birth date gives on as_of (-1: none)",
    "quantity": "a double in the unit units convert to; options if_no_unit, ignore_unit_case",
    "const": "value, in every record",
    "codes": "every code at the path in valueset, sorted (a list); map translates them",
    "coded": "some coding uses a system one of the mapping's value sets uses",
    "unusable": "field had a value that could not be used",
    "lookup": "the label map gives the value at the path, else the default",
}

Scalar = str | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldDoc(_Strict):
    """One field of a record."""

    type: FieldType = Field(description="what the field holds and how it is read (see Field types)")
    path: str | None = Field(
        default=None,
        description="where the value is in the resource: a path of element names, alternatives "
        "joined by '|', filters in brackets, resolve() to follow a Reference",
    )
    valueset: str | None = Field(
        default=None,
        description="the id of a value set: code, codes and in_valueset fields match codings "
        "against it; number fields with code_values take only its codes",
    )
    labels: dict[str, str] | None = Field(
        default=None,
        description="labels: each label and the id of the value set whose codes give it",
    )
    values: list[str] | None = Field(
        default=None, description="one_of: the values that make the field true"
    )
    field: str | None = Field(
        default=None,
        description="present, unusable: the other field of this source whose value is judged",
    )
    units: dict[str, float] | None = Field(
        default=None,
        description="quantity: each accepted unit (UCUM code or text) and the factor to the "
        "field's unit",
    )
    if_no_unit: str | None = Field(
        default=None, description="quantity: the unit assumed for a value without one"
    )
    value: Scalar | None = Field(default=None, description="const: the value every record holds")
    default: Scalar | list[str] | None = Field(
        default=None,
        description="the value when the resource has none (else the type's own: '', 0, false, "
        "[] ...); never null",
    )
    map: dict[str, str] | None = Field(
        default=None,
        description="lookup: the label each value stands for; codes: the label each code "
        "stands for (only mapped codes are kept)",
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
    ignore_unit_case: bool = Field(
        default=False, description="quantity: units match whatever their case (MG/DL, mg/dL)"
    )
    ignore_case: bool = Field(default=False, description="lookup: values match whatever their case")
    code_values: dict[str, float] | None = Field(
        default=None,
        description="number: a coded value (in 'valueset', when given) stands for this number",
    )
    step: float | None = Field(
        default=None, description="number: only multiples of step (from range's low) are usable"
    )
    description: str = Field(default="", description="what the field means, for the reader")

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

    path: str = Field(description="the element tested, as a field's path")
    in_: list[str] | None = Field(
        default=None,
        alias="in",
        description="the resource passes when a value at path is one of these ('true'/'false' "
        "for JSON booleans)",
    )
    not_in: list[str] | None = Field(
        default=None, description="the resource passes when no value at path is one of these"
    )
    in_valueset: list[str] | None = Field(
        default=None,
        description="the resource passes when a coding at path is in one of these value sets "
        "(ids; one id alone is a list of one)",
    )
    if_missing: Literal["keep", "drop"] | None = Field(
        default=None,
        description="a resource without a value at path: keep or drop it (default: drop for in "
        "and in_valueset, keep for not_in)",
    )
    search: str | None = Field(
        default=None,
        description="the search parameter that applies this filter on a FHIR server (live "
        "runs and Bulk Data _typeFilter); prescreen checks every resource again",
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
    """One resource type a fact is read from."""

    resource: str = Field(description="the FHIR resource type read (Condition, Observation...)")
    patient: str = Field(default="subject", description="the path to the Reference to the patient")
    patient_search: str = Field(
        default="patient", description="search parameter selecting a patient's resources"
    )
    resolve: dict[str, str] = Field(
        default={},
        description="Reference elements that paths may follow with resolve(), and the "
        "resource type each points to (read from the same source, or fetched live)",
    )
    where: list[WhereDoc] = Field(
        default=[], description="filters a resource must pass, all of them, to give a record"
    )
    fields: dict[str, FieldDoc] = Field(
        description="the record's fields by name: every source of a fact declares the same"
    )

    @model_validator(mode="after")
    def _presence_targets(self) -> SourceDoc:
        for name, spec in self.fields.items():
            target = self.fields.get(spec.field or "") if spec.field else None
            if spec.field and (target is None or target.field):
                raise ValueError(f"field '{name}': 'field' must name another, non-presence field")
        return self


class FactDoc(_Strict):
    """A named input of the rules: a list of records (or, with one: true, the Patient's)."""

    one: bool = Field(
        default=False,
        description="the fact is one record, not a list: the Patient (exactly one fact is)",
    )
    description: str = Field(default="", description="what the fact holds, for the reader")
    sources: Annotated[list[SourceDoc], Field(min_length=1)] = Field(
        description="the resource types the records come from"
    )


class CohortDoc(_Strict):
    """How live runs find candidate patients: resources coded in these value sets."""

    resource: str = Field(description="the resource type searched (Condition...)")
    search: str = Field(default="code", description="its token search parameter for the codes")
    patient_search: str = Field(
        default="patient", description="the search parameter naming the patient"
    )
    valuesets: Annotated[list[str], Field(min_length=1)] = Field(
        description="ids of the value sets whose codes make a patient worth screening"
    )


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

    trim_whitespace: bool = Field(
        default=True, description="spaces around a system or code are ignored"
    )
    ignore_trailing_slash: bool = Field(
        default=True, description="a system URI ending in '/' is the one without it"
    )
    ignore_scheme: bool = Field(default=True, description="http and https name one system")
    systems: dict[str, SystemDoc] = Field(
        default={}, description="rules for one code system, by its canonical URI"
    )


class SkipDoc(_Strict):
    """A Patient this test matches is not screened (and the reason is reported)."""

    path: str = Field(description="a path into the Patient resource")
    in_: list[str] = Field(
        alias="in", description="values at path that mean the patient is not screened"
    )
    reason: str = Field(description="why, as reported with the not-screened input issue")


class PatientsDoc(_Strict):
    """Which patients get no verdict at all."""

    not_screened: list[SkipDoc] = Field(
        default=[], description="tests on the Patient resource; any one that matches skips it"
    )


class MappingDoc(_Strict):
    """A mapping file: the facts a rule set reads, and how they are read from FHIR."""

    id: str = Field(description="the mapping's name (a rule file's mapping: names the file)")
    version: str = Field(description="the mapping's version, reported by rules check")
    description: str = Field(default="", description="what the mapping is for, for the reader")
    valuesets: list[str] = Field(
        default=["valuesets"],
        description="folders (beside this file) whose ValueSet JSON files the mapping may use; "
        "every value set is found by its id, in one namespace for all the folders",
    )
    codes: CodesDoc = Field(
        default=CodesDoc(), description="how codes written in the data are matched"
    )
    patients: PatientsDoc = Field(default=PatientsDoc(), description="patients not to screen")
    cohort: CohortDoc | None = Field(
        default=None,
        description="how a live run without a patient list finds its candidates on the "
        "server: the patients with a resource coded in these value sets",
    )
    facts: dict[str, FactDoc] = Field(description="the facts, by the name rules read them by")

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
