"""Who a patient is, for the people who read the results: name, medical record number (MRN),
birth date and sex.

They are read from the Patient by the paths of a mapping's ``display`` section (data, like every
path: which identifier is the MRN is a value set there, not a code here). They are never facts:
no rule reads them and the offline outputs never carry them; the service keeps them with its
worklist rows so that coordinators know whom a row is about. Real records are read leniently:
a value of the wrong JSON type is passed over, an old name or number is used only when there is
no other, and nothing here raises on what a record holds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.mapping.paths import Path as FhirPath
from service.terminology import CodeCanonicalizer

# HumanName.use in the order a name is chosen for display (an unlisted use comes after these,
# "old" last of all).
NAME_USE_ORDER = ("official", "usual", "", "temp", "nickname", "anonymous", "maiden")
_FHIR_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
LONGEST = 200  # characters kept of a name or a number


@dataclass(frozen=True, slots=True)
class PatientDetails:
    """What the worklist shows to identify a patient; empty strings for what the record lacks.
    ``birth_date`` is as written (a FHIR date: YYYY, YYYY-MM or YYYY-MM-DD)."""

    name: str = ""
    mrn: str = ""
    birth_date: str = ""
    sex: str = ""

    def __bool__(self) -> bool:
        return any((self.name, self.mrn, self.birth_date, self.sex))


def _text(value: Any) -> str:
    """A clean single-line string, or "" for anything that is not a string."""
    if not isinstance(value, str):
        return ""
    return _CONTROL.sub(" ", value).strip()[:LONGEST]


def _system(value: Any) -> str:
    return _text(value).rstrip("/")


def format_name(name: Any) -> str:
    """A HumanName as "Family, Given Given" (its ``text`` when it has no parts)."""
    if not isinstance(name, dict):
        return ""
    family = _text(name.get("family"))
    given_items = name.get("given")
    parts = [_text(g) for g in given_items] if isinstance(given_items, list) else []
    given = " ".join(part for part in parts if part)
    if family and given:
        return f"{family}, {given}"[:LONGEST]
    return family or given or _text(name.get("text"))


def _use_rank(item: dict[str, Any], order: tuple[str, ...]) -> int:
    use = item.get("use")
    use = use if isinstance(use, str) else ""
    if use == "old":
        return len(order) + 1
    return order.index(use) if use in order else len(order)


def choose_name(names: list[Any]) -> str:
    """The name to show: official first, then usual, then any other; an old one last."""
    usable = [n for n in names if isinstance(n, dict) and format_name(n)]
    if not usable:
        return ""
    return format_name(min(usable, key=lambda n: _use_rank(n, NAME_USE_ORDER)))


def choose_mrn(identifiers: list[Any], system: str = "") -> str:
    """The value of the first identifier the path kept that is in use (an old one only when
    nothing else is there) and, when ``system`` is given, of that system."""
    wanted = _system(system)
    usable = [
        item
        for item in identifiers
        if isinstance(item, dict)
        and _text(item.get("value"))
        and (not wanted or _system(item.get("system")) == wanted)
    ]
    if not usable:
        return ""
    current = [item for item in usable if item.get("use") != "old"]
    return _text((current or usable)[0].get("value"))


@dataclass(frozen=True)
class DisplayReader:
    """The compiled ``display`` section of a mapping."""

    name: FhirPath | None
    mrn: FhirPath | None
    birth_date: FhirPath | None
    sex: FhirPath | None
    canonicalizer: CodeCanonicalizer

    def read(self, patient: Mapping[str, Any], mrn_system: str = "") -> PatientDetails:
        """The details of one Patient resource (codings are compared as the mapping reads
        codes: the resource is left as it was)."""
        if not isinstance(patient, dict):
            return PatientDetails()
        changed = self.canonicalizer.canonicalize(patient.get("identifier"))
        try:
            mrn = choose_mrn(self.mrn.values(patient), mrn_system) if self.mrn else ""
        finally:
            for coding, system, code in changed:
                coding["system"], coding["code"] = system, code
        birth = _text(self.birth_date.first(patient)) if self.birth_date else ""
        return PatientDetails(
            name=choose_name(self.name.values(patient)) if self.name else "",
            mrn=mrn,
            birth_date=birth if _FHIR_DATE.match(birth) else "",
            sex=_text(self.sex.first(patient))[:32] if self.sex else "",
        )
