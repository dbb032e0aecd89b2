"""Field extractors: how each field type of a mapping reads its value from a resource.

An extractor returns the value, ``ABSENT`` when the resource does not carry it, or ``Lenient``
when it could read it only by bending the rules (the caller reports that); it raises
``UnusableValueError`` for a value that is there but cannot be used. It never returns null.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from service.errors import ConfigError
from service.fhirdates import FhirDateError, age_range_years, parse_datetime
from service.mapping.paths import Path as FhirPath
from service.mapping.paths import compile_path
from service.mapping.spec import FieldDoc
from service.terminology import ValueSet, codings

FactValue = str | float | bool | list[str]

# Field types whose value depends on as_of as well as on the resource (ages).
AS_OF_FIELD_TYPES = frozenset({"age_min_years", "age_max_years"})

# The value a field has when the resource does not carry it: facts never hold nulls.
NATURAL_DEFAULTS: dict[str, FactValue] = {
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
    "codes": [],
    "coded": False,
    "unusable": False,
    "lookup": "",
}


class UnusableValueError(ValueError):
    """A field whose value is present but unusable (bad date, text where a number belongs)."""


@dataclass(frozen=True, slots=True)
class DataIssue:
    """A problem with one field of one resource; never carries the offending value (PHI).

    ``kind``: ``bad-value`` (unusable, treated as absent), ``lenient-value`` (doubtful but used),
    ``noncanonical-code`` (matched only after normalising a code), ``unresolved-reference``.
    """

    field: str
    message: str
    kind: str = "bad-value"


@dataclass(frozen=True, slots=True)
class Lenient:
    """What an extractor returns for a value it could read only by bending the rules."""

    value: FactValue
    message: str


class Absent:
    """What an extractor returns when the resource does not carry the value at all."""


ABSENT = Absent()
Extracted = FactValue | Absent | Lenient
Extractor = Callable[[Any, date], Extracted]


_DECIMAL = re.compile(r"^\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*$")


def _number(value: Any) -> float | Lenient:
    """A JSON number; a number written as a JSON string is read and reported as lenient."""
    if isinstance(value, str) and _DECIMAL.match(value):
        return Lenient(_finite(float(value)), "is a number written as text")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnusableValueError("is not a number")
    try:
        return _finite(float(value))
    except OverflowError as exc:  # an integer too large for a double
        raise UnusableValueError("is not a finite number") from exc


def _finite(number: float) -> float:
    if not math.isfinite(number):
        raise UnusableValueError("is not a finite number")
    return number


def _date_value(value: Any, kind: str) -> FactValue | Lenient:
    if not isinstance(value, str):
        raise UnusableValueError("is not a FHIR date")
    try:
        parsed = parse_datetime(value)
    except FhirDateError as exc:
        raise UnusableValueError(str(exc)) from exc
    result = parsed.day if kind == "date" else parsed.instant
    if parsed.lenient:
        return Lenient(result, "has a time without a time-zone offset (read by its calendar day)")
    return result


def make_extractor(spec: FieldDoc, valuesets: Mapping[str, ValueSet], where: str) -> Extractor:
    kind = spec.type
    if kind == "const":
        constant: FactValue = spec.value  # type: ignore[assignment]
        return lambda _resource, _as_of: constant
    if kind in ("present", "unusable") and spec.field:
        return lambda _resource, _as_of: ABSENT  # decided from the other field, in record()
    assert spec.path is not None
    path = compile_path(spec.path, valuesets, where)

    def valueset(vs_id: str | None) -> ValueSet:
        found = valuesets.get(vs_id or "")
        if found is None:
            raise ConfigError(f"{where}: unknown value set '{vs_id}'")
        return found

    if kind == "codes":
        codes_vs = valueset(spec.valueset)
        translate = dict(spec.map or {})

        def code_list(resource: Any, _as_of: date) -> Extracted:
            found = {
                translate.get(code, code) if translate else code
                for value in path.values(resource)
                for system, code in codings(value)
                if codes_vs.contains(system, code) and (not translate or code in translate)
            }
            return sorted(found) if found else ABSENT

        return code_list
    if kind == "coded":
        known_systems = frozenset(s for vs in valuesets.values() for s in vs.systems)
        return lambda resource, _as_of: any(
            system in known_systems for v in path.values(resource) for system, _ in codings(v)
        )
    if kind == "lookup":
        fold = str.lower if spec.ignore_case else str
        labels_of = {fold(value): label for value, label in (spec.map or {}).items()}

        def lookup(resource: Any, _as_of: date) -> Extracted:
            for value in path.values(resource):
                label = labels_of.get(fold(scalar_text(value)))
                if label is not None:
                    return label
            return ABSENT

        return lookup
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

        def when(resource: Any, _as_of: date) -> Extracted:
            value = path.first(resource)
            if value is None:
                return ABSENT
            return _date_value(value, kind)

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
        return _number_extractor(spec, path, valueset(spec.valueset) if spec.valueset else None)
    if kind == "quantity":
        return _quantity_extractor(spec, path)
    if kind == "bool":

        def flag(resource: Any, _as_of: date) -> Extracted:
            value = path.first(resource)
            if value is None or isinstance(value, bool):
                return value is True
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return Lenient(value.strip().lower() == "true", "is true or false written as text")
            raise UnusableValueError("is not true or false")

        return flag
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


def scalar_text(value: Any) -> str:
    """A code or flag as text: JSON true/false as FHIR writes them, stray spaces dropped."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value.strip() if isinstance(value, str) else str(value)


def _number_extractor(spec: FieldDoc, path: FhirPath, answers: ValueSet | None = None) -> Extractor:
    pattern = re.compile(spec.text_pattern) if spec.text_pattern else None
    low, high = spec.range if spec.range is not None else (-math.inf, math.inf)
    code_values = dict(spec.code_values or {})

    def number(resource: Any, _as_of: date) -> Extracted:
        value = _first_value(path, resource, spec.required)
        if value is None:
            return ABSENT
        lenient: str | None = None
        if code_values and isinstance(value, dict):
            # A coded answer (LOINC LA codes, for instance) stands for its number.
            found = [
                code_values[code]
                for system, code in codings(value)
                if code in code_values and (answers is None or answers.contains(system, code))
            ]
            if not found:
                raise UnusableValueError("is a code this mapping gives no number for")
            amount = found[0]
        elif pattern is not None and isinstance(value, str):
            # Text is read only in the form the mapping allows ("7", "7/10"), never guessed.
            match = pattern.fullmatch(value)
            if match is None:
                raise UnusableValueError("is text that is not a number in the expected form")
            read = _number(match.group(1))  # the mapping's group may catch non-numbers too
            amount = float(read.value if isinstance(read, Lenient) else read)  # type: ignore[arg-type]
            lenient = "is a number written as text"
        else:
            read = _number(value)
            if isinstance(read, Lenient):
                lenient, amount = read.message, float(read.value)  # type: ignore[arg-type]
            else:
                amount = read
        if not low <= amount <= high:
            raise UnusableValueError(f"is outside {low:g}-{high:g}")
        if (
            spec.step
            and not ((amount - (low if math.isfinite(low) else 0.0)) / spec.step).is_integer()
        ):
            raise UnusableValueError(f"is not in steps of {spec.step:g}")
        if spec.integer and not amount.is_integer():
            lenient = lenient or "is not a whole number (compared as it is)"
        return Lenient(amount, lenient) if lenient else amount

    return number


def _quantity_extractor(spec: FieldDoc, path: FhirPath) -> Extractor:
    fold = str.lower if spec.ignore_unit_case else str
    units = {fold(unit): factor for unit, factor in (spec.units or {}).items()}
    assumed = fold(spec.if_no_unit) if spec.if_no_unit else None

    def quantity(resource: Any, _as_of: date) -> Extracted:
        value = _first_value(path, resource, spec.required)
        if value is None:
            return ABSENT
        given: list[str] = []
        if isinstance(value, dict):
            written = [value.get(key) for key in ("code", "unit")]
            given = [fold(u.strip()) for u in written if isinstance(u, str) and u.strip()]
            value = _required(value.get("value"), spec.required)
            if value is None:
                return ABSENT
        read = _number(value)
        amount = float(read.value if isinstance(read, Lenient) else read)  # type: ignore[arg-type]
        if not given:
            if assumed not in units:
                raise UnusableValueError("has no unit and the mapping assumes none")
            factor = units[assumed]
        else:
            found = next((units[u] for u in given if u in units), None)
            if found is None:
                raise UnusableValueError("has a unit this mapping cannot convert")
            factor = found
        return (
            Lenient(amount * factor, read.message) if isinstance(read, Lenient) else amount * factor
        )

    return quantity


def _first_value(path: FhirPath, resource: Any, required: bool) -> Any:
    """The first value at the path; None when there is none, unless one is required."""
    return _required(path.first(resource), required)


def _required(value: Any, required: bool) -> Any:
    if value is None and required:
        raise UnusableValueError("has no value")
    return value


def default_for(spec: FieldDoc) -> FactValue:
    if spec.type == "const":
        return spec.value  # type: ignore[return-value]
    if spec.default is None:
        return NATURAL_DEFAULTS.get(spec.type, "")
    if spec.type in ("number", "quantity", "age_min_years", "age_max_years"):
        return float(spec.default)  # type: ignore[arg-type]
    return spec.default
