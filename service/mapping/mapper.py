"""Compiled mappings: FHIR resources (parsed JSON) in, flat fact records out."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from service.errors import ConfigError
from service.fhirdates import FhirDateError, age_range_years, to_iso_date, to_utc_instant
from service.mapping.paths import Path as FhirPath
from service.mapping.paths import compile_path
from service.mapping.spec import FieldDoc, MappingDoc, SourceDoc, WhereDoc, read_mapping_doc
from service.terminology import ValueSet, codings, load_valuesets

FactValue = str | float | bool | list[str]
Record = dict[str, FactValue]

# The value a field has when the resource does not carry it: facts never hold nulls.
_NATURAL_DEFAULTS: dict[str, FactValue] = {
    "string": "",
    "code": "",
    "date": "",
    "instant": "",
    "number": 0.0,
    "bool": False,
    "present": False,
    "in_valueset": False,
    "one_of": False,
    "labels": [],
    "age_min_years": -1.0,
    "age_max_years": -1.0,
    "quantity": 0.0,
}


class UnusableValueError(ValueError):
    """A field whose value is present but unusable (bad date, text where a number belongs)."""


class UnattributableResourceError(ValueError):
    """A resource that cannot be attributed or referenced (no id, no patient subject)."""


@dataclass(frozen=True, slots=True)
class DataIssue:
    """A problem with one field of one resource; never carries the offending value (PHI)."""

    field: str
    message: str


class _Absent:
    """What an extractor returns when the resource does not carry the value at all."""


ABSENT = _Absent()
Extracted = FactValue | _Absent
Extractor = Callable[[Any, date], Extracted]


@dataclass(frozen=True, slots=True)
class CompiledField:
    name: str
    default: FactValue
    extract: Extractor
    presence_of: str | None = (
        None  # a "present" field that reports whether another field was usable
    )
    path_source: str = ""


@dataclass(frozen=True, slots=True)
class CompiledWhere:
    path: FhirPath
    test: Callable[[list[Any]], bool]
    keep_if_missing: bool
    valueset_codes: frozenset[str] | None
    search_param: str | None = None
    search_tokens: tuple[str, ...] = ()  # "system|code" or plain codes, sorted

    def passes(self, resource: Any) -> bool:
        values = self.path.values(resource)
        if not values:
            return self.keep_if_missing
        return self.test(values)


@dataclass(frozen=True, slots=True)
class CompiledSource:
    fact: str
    resource_type: str
    patient_path: FhirPath | None
    where: tuple[CompiledWhere, ...]
    fields: tuple[CompiledField, ...]
    patient_search: str = "patient"

    @property
    def server_filters(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(search parameter, allowed tokens) the server can apply; prescreen re-checks all."""
        return tuple(
            (clause.search_param, clause.search_tokens)
            for clause in self.where
            if clause.search_param is not None
        )

    def accepts(self, resource: Any) -> bool:
        return all(clause.passes(resource) for clause in self.where)

    def record(self, resource: Any, ref: str, as_of: date) -> tuple[Record, list[DataIssue]]:
        record: Record = {"ref": ref}
        issues: list[DataIssue] = []
        usable: set[str] = set()
        for spec in self.fields:
            if spec.presence_of is not None:
                continue
            try:
                value = spec.extract(resource, as_of)
            except UnusableValueError as exc:
                record[spec.name] = spec.default
                # Several fields may read one element (birthDate for age and date): report it once.
                where = f"{self.resource_type}.{spec.path_source}"
                if all(issue.field != where for issue in issues):
                    issues.append(DataIssue(where, str(exc)))
                continue
            if isinstance(value, _Absent):
                record[spec.name] = spec.default
            else:
                record[spec.name] = value
                usable.add(spec.name)
        for spec in self.fields:
            if spec.presence_of is not None:
                # An unusable value (bad date, text for a number) is as good as no value.
                record[spec.name] = spec.presence_of in usable
        return record, issues

    @property
    def prefilter_codes(self) -> frozenset[str] | None:
        """Codes one of which must appear in the raw line, or None if any line may match."""
        for clause in self.where:
            if clause.valueset_codes is not None:
                return clause.valueset_codes
        return None


@dataclass(frozen=True, slots=True)
class FactSchema:
    name: str
    one: bool
    defaults: Record
    description: str


@dataclass(frozen=True, slots=True)
class Contribution:
    fact: str
    record: Record


@dataclass(slots=True)
class MappedResource:
    patient_id: str
    ref: str
    contributions: list[Contribution] = field(default_factory=list)
    issues: list[DataIssue] = field(default_factory=list)


def _first_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnusableValueError("is not a number")
    return float(value)


def _make_extractor(spec: FieldDoc, valuesets: Mapping[str, ValueSet], where: str) -> Extractor:
    kind = spec.type
    if kind == "const":
        constant: FactValue = spec.value  # type: ignore[assignment]
        return lambda _resource, _as_of: constant
    if kind == "present" and spec.field:
        return lambda _resource, _as_of: ABSENT  # decided from the other field, in record()
    assert spec.path is not None
    path = compile_path(spec.path, valuesets, where)

    def valueset(vs_id: str | None) -> ValueSet:
        found = valuesets.get(vs_id or "")
        if found is None:
            raise ConfigError(f"{where}: unknown value set '{vs_id}'")
        return found

    if kind in ("string", "code"):
        code_vs = valueset(spec.valueset) if spec.valueset else None

        def text(resource: Any, _as_of: date) -> Extracted:
            for value in path.values(resource):
                if code_vs is not None:
                    for system, code in codings(value):
                        if code_vs.contains(system, code):
                            return code
                    continue
                if not isinstance(value, str):
                    raise UnusableValueError("is not text")
                return value
            return ABSENT

        return text
    if kind in ("date", "instant"):
        convert = to_iso_date if kind == "date" else to_utc_instant

        def when(resource: Any, _as_of: date) -> Extracted:
            value = path.first(resource)
            if value is None:
                return ABSENT
            if not isinstance(value, str):
                raise UnusableValueError("is not a FHIR date")
            try:
                return convert(value)
            except FhirDateError as exc:
                raise UnusableValueError(str(exc)) from exc

        return when
    if kind in ("age_min_years", "age_max_years"):
        index = 0 if kind == "age_min_years" else 1

        def age(resource: Any, as_of: date) -> Extracted:
            value = path.first(resource)
            if value is None:
                return ABSENT
            if not isinstance(value, str):
                raise UnusableValueError("is not a FHIR date")
            try:
                return age_range_years(value, as_of)[index]
            except FhirDateError as exc:
                raise UnusableValueError(str(exc)) from exc

        return age
    if kind == "number":

        def number(resource: Any, _as_of: date) -> Extracted:
            value = path.first(resource)
            return ABSENT if value is None else _first_number(value)

        return number
    if kind == "quantity":
        units = dict(spec.units or {})
        assumed = spec.if_no_unit

        def quantity(resource: Any, _as_of: date) -> Extracted:
            value = path.first(resource)
            if value is None:
                return ABSENT
            if not isinstance(value, dict):
                if assumed not in units:
                    raise UnusableValueError("has no unit and the mapping assumes none")
                return _first_number(value) * units[assumed]
            if value.get("value") is None:
                return ABSENT
            amount = _first_number(value.get("value"))
            unit = value.get("code") or value.get("unit") or assumed
            if unit not in units:
                raise UnusableValueError("has a unit this mapping cannot convert")
            return amount * units[unit]

        return quantity
    if kind == "bool":
        return lambda resource, _as_of: path.first(resource) is True
    if kind == "present":
        return lambda resource, _as_of: bool(path.values(resource))
    if kind == "in_valueset":
        member = valueset(spec.valueset)
        return lambda resource, _as_of: any(
            member.matches_concept(v) for v in path.values(resource)
        )
    if kind == "one_of":
        wanted = frozenset(spec.values or ())
        return lambda resource, _as_of: any(str(v) in wanted for v in path.values(resource))
    if kind == "labels":
        labelled = [(label, valueset(vs_id)) for label, vs_id in (spec.labels or {}).items()]

        def labels(resource: Any, _as_of: date) -> FactValue:
            values = path.values(resource)
            return [label for label, vs in labelled if any(vs.matches_concept(v) for v in values)]

        return labels
    raise ConfigError(f"{where}: unsupported field type '{kind}'")


def _default_for(spec: FieldDoc) -> FactValue:
    if spec.type == "const":
        return spec.value  # type: ignore[return-value]
    if spec.default is None:
        return _NATURAL_DEFAULTS.get(spec.type, "")
    if spec.type in ("number", "quantity", "age_min_years", "age_max_years"):
        return float(spec.default)
    return spec.default


def _compile_where(
    clause: WhereDoc, valuesets: Mapping[str, ValueSet], where: str
) -> CompiledWhere:
    path = compile_path(clause.path, valuesets, where)
    if clause.in_valueset is not None:
        members: list[ValueSet] = []
        for vs_id in clause.in_valueset:
            if vs_id not in valuesets:
                raise ConfigError(f"{where}: unknown value set '{vs_id}'")
            members.append(valuesets[vs_id])
        codes = frozenset(code for vs in members for code in vs.code_strings)
        tokens = tuple(sorted({f"{s}|{c}" for vs in members for s, c in vs.codes}))
        return CompiledWhere(
            path,
            lambda values: any(vs.matches_concept(v) for v in values for vs in members),
            clause.if_missing == "keep",
            codes,
            clause.search,
            tokens,
        )
    if clause.in_ is not None:
        allowed = frozenset(clause.in_)
        return CompiledWhere(
            path,
            lambda values: any(str(v) in allowed for v in values),
            clause.if_missing == "keep",
            None,
            clause.search,
            tuple(sorted(allowed)),
        )
    refused = frozenset(clause.not_in or ())
    return CompiledWhere(
        path,
        lambda values: not any(str(v) in refused for v in values),
        clause.if_missing != "drop",
        None,
    )


@dataclass(frozen=True, slots=True)
class Cohort:
    """Live discovery: search ``resource_type?{search}=tokens`` and collect the patients."""

    resource_type: str
    search: str
    patient_search: str
    tokens: tuple[str, ...]


@dataclass(frozen=True)
class Mapper:
    """A loaded mapping: which resources to read, and how to turn them into facts."""

    id: str
    version: str
    source_file: Path
    valuesets: Mapping[str, ValueSet]
    facts: Mapping[str, FactSchema]
    sources: Mapping[str, tuple[CompiledSource, ...]]
    prefilters: Mapping[str, re.Pattern[bytes] | None]
    cohort: Cohort | None = None

    @property
    def resource_types(self) -> frozenset[str]:
        return frozenset(self.sources)

    def map_resource(self, resource: Mapping[str, Any], as_of: date) -> MappedResource | None:
        """Records this resource contributes, or None when no source wants it.

        Raises UnattributableResourceError when a wanted resource cannot be attributed to a patient.
        """
        resource_type = resource.get("resourceType")
        sources = self.sources.get(resource_type) if isinstance(resource_type, str) else None
        if not sources:
            return None
        accepted = [source for source in sources if source.accepts(resource)]
        if not accepted:
            return None
        resource_id = resource.get("id")
        if not isinstance(resource_id, str) or not resource_id:
            raise UnattributableResourceError("resource has no id")
        ref = f"{resource_type}/{resource_id}"
        patient_id = _patient_of(resource, accepted[0].patient_path, resource_id)
        mapped = MappedResource(patient_id, ref)
        for source in accepted:
            record, issues = source.record(resource, ref, as_of)
            mapped.contributions.append(Contribution(source.fact, record))
            mapped.issues.extend(issues)
        return mapped

    def schema_sample(self) -> dict[str, Any]:
        """Facts holding one default record each: used to dry-run rules at load time."""
        sample: dict[str, Any] = {}
        for name, schema in self.facts.items():
            record = {"ref": f"Sample/{name}", **schema.defaults}
            sample[name] = record if schema.one else [record]
        return sample


def _patient_of(resource: Mapping[str, Any], patient_path: FhirPath | None, own_id: str) -> str:
    if patient_path is None:
        return own_id
    reference = patient_path.first(resource)
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        raise UnattributableResourceError("resource has no subject/patient reference")
    return patient_id_from_reference(reference["reference"])


def patient_of(resource: Mapping[str, Any]) -> str | None:
    """The patient a resource belongs to (its own id for a Patient), from subject or patient."""
    if resource.get("resourceType") == "Patient":
        return str(resource["id"]) if resource.get("id") else None
    for key in ("subject", "patient"):
        value = resource.get(key)
        if isinstance(value, dict) and isinstance(value.get("reference"), str):
            try:
                return patient_id_from_reference(value["reference"])
            except UnattributableResourceError:
                return None
    return None


def patient_id_from_reference(reference: str) -> str:
    """The id in ``Patient/1``, ``https://host/fhir/Patient/1`` or ``Patient/1/_history/2``."""
    parts = reference.split("/")
    for index in range(len(parts) - 1):
        if parts[index] == "Patient" and parts[index + 1]:
            return parts[index + 1]
    raise UnattributableResourceError("subject does not reference a Patient")


def load_mapping(path: Path) -> Mapper:
    doc: MappingDoc = read_mapping_doc(path)
    folders = [path.parent / folder for folder in doc.valuesets]
    valuesets = load_valuesets(folders)
    facts: dict[str, FactSchema] = {}
    sources: dict[str, list[CompiledSource]] = {}
    for fact_name, fact in doc.facts.items():
        defaults: Record = {}
        for index, source in enumerate(fact.sources):
            compiled = _compile_source(path, fact_name, index, source, valuesets)
            sources.setdefault(source.resource, []).append(compiled)
            defaults = {f.name: f.default for f in compiled.fields}
        facts[fact_name] = FactSchema(fact_name, fact.one, defaults, fact.description)
    prefilters = {rtype: _prefilter(srcs) for rtype, srcs in sources.items()}
    cohort = None
    if doc.cohort is not None:
        unknown = [vs for vs in doc.cohort.valuesets if vs not in valuesets]
        if unknown:
            raise ConfigError(f"{path}: cohort names unknown value sets {unknown}")
        cohort = Cohort(
            doc.cohort.resource,
            doc.cohort.search,
            doc.cohort.patient_search,
            tuple(
                sorted({f"{s}|{c}" for vs in doc.cohort.valuesets for s, c in valuesets[vs].codes})
            ),
        )
    return Mapper(
        cohort=cohort,
        id=doc.id,
        version=doc.version,
        source_file=path,
        valuesets=valuesets,
        facts=facts,
        sources={rtype: tuple(srcs) for rtype, srcs in sources.items()},
        prefilters=prefilters,
    )


def _compile_source(
    path: Path, fact: str, index: int, source: SourceDoc, valuesets: Mapping[str, ValueSet]
) -> CompiledSource:
    where = f"{path}: fact '{fact}' source {index + 1} ({source.resource})"
    patient_path = (
        None if source.resource == "Patient" else compile_path(source.patient, valuesets, where)
    )
    fields = tuple(
        CompiledField(
            name,
            _default_for(spec),
            _make_extractor(spec, valuesets, f"{where} field '{name}'"),
            spec.field if spec.type == "present" else None,
            spec.path or "",
        )
        for name, spec in source.fields.items()
    )
    clauses = tuple(_compile_where(clause, valuesets, where) for clause in source.where)
    return CompiledSource(
        fact, source.resource, patient_path, clauses, fields, source.patient_search
    )


def _prefilter(sources: list[CompiledSource]) -> re.Pattern[bytes] | None:
    """A byte pattern a raw NDJSON line must contain to be worth parsing.

    Only when every source of the type is restricted to value sets: then a line that mentions
    none of their codes as a JSON string cannot match, and is skipped without parsing.
    """
    codes: set[str] = set()
    for source in sources:
        needed = source.prefilter_codes
        if needed is None:
            return None
        codes.update(needed)
    alternatives = b"|".join(re.escape(code.encode()) for code in sorted(codes))
    # Anchored on the Coding.code key: the literal prefix lets the regex engine skip ahead,
    # nearly twice as fast as matching any quoted string. Keys written with JSON escapes
    # (\u0063ode) would slip through; no exporter writes them.
    return re.compile(rb'"code"\s*:\s*"(?:' + alternatives + rb')"')
