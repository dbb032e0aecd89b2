"""The mapping file format (``fhir_mappings/<id>.yaml``) and its validation.

A mapping declares *facts*: named inputs for the rules. Each fact is read from one or more
FHIR resource types (sources); each source filters resources (``where``) and extracts a flat
record of typed fields. Every record of a fact has the same keys, always present, never null.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.errors import ConfigError

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
]


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
    value: str | float | bool | None = None
    default: str | float | bool | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check_shape(self) -> FieldDoc:
        if self.type == "const":
            if self.value is None:
                raise ValueError("a const field needs 'value'")
            return self
        if self.type == "present" and self.field:
            return self
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


class MappingDoc(_Strict):
    id: str
    version: str
    description: str = ""
    valuesets: list[str] = ["valuesets"]
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
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: mapping file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    try:
        return MappingDoc.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
