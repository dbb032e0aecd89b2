"""The values behind a verdict: the resources a criterion names as evidence, read from the FHIR
server and summarised as a coordinator reads them (the score and its date, the diagnosis and its
body site, the procedure and its date), each with its FHIR reference.

Nothing here knows a trial: codes are shown with the display the resource gives, else the one
the mapping's value sets and code systems give, else as ``system|code``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from service.fhir.client import FhirClient, Json

log = logging.getLogger(__name__)

IDS_PER_SEARCH = 40  # keeps each _id search URL short


@dataclass(frozen=True)
class Evidence:
    reference: str
    title: str
    facts: tuple[tuple[str, str], ...] = ()
    available: bool = True


@dataclass
class Displays:
    """Code displays from the mapping's ValueSets and CodeSystems (data, not Python)."""

    names: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def load(cls, mappings_dir: Path) -> Displays:
        displays = cls()
        for path in sorted(mappings_dir.glob("**/*.json")):
            try:
                resource = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue
            if isinstance(resource, dict):
                displays._take(resource)
        return displays

    def _take(self, resource: dict[str, Any]) -> None:
        if resource.get("resourceType") == "CodeSystem":
            self._concepts(str(resource.get("url", "")), resource.get("concept", []))
        for include in resource.get("compose", {}).get("include", []):
            self._concepts(str(include.get("system", "")), include.get("concept", []))
        for item in resource.get("expansion", {}).get("contains", []):
            self._concepts(str(item.get("system", "")), [item])

    def _concepts(self, system: str, concepts: Iterable[Any]) -> None:
        for concept in concepts:
            if not isinstance(concept, dict):
                continue
            if concept.get("code") and concept.get("display"):
                self.names.setdefault((system, str(concept["code"])), str(concept["display"]))
            self._concepts(system, concept.get("concept", []))

    def coding(self, coding: Any) -> str:
        if not isinstance(coding, dict):
            return ""
        system, code = str(coding.get("system", "")), str(coding.get("code", ""))
        display = coding.get("display") or self.names.get((system, code))
        if display and code:
            return f"{display} ({code})"
        return str(display or (f"{system}|{code}" if system else code))

    def concept(self, concept: Any) -> str:
        """A CodeableConcept as text: every coding (a body site may carry several)."""
        if not isinstance(concept, dict):
            return ""
        shown = [self.coding(c) for c in concept.get("coding", []) if isinstance(c, dict)]
        shown = [s for s in shown if s]
        return "; ".join(shown) or str(concept.get("text", ""))


def _date(resource: Json, *names: str) -> str:
    """The first date element present: a dateTime, or a Period's start (else end)."""
    for name in names:
        value = resource.get(name)
        if isinstance(value, str):
            return value
        if isinstance(value, dict) and (value.get("start") or value.get("end")):
            start, end = value.get("start"), value.get("end")
            return f"{start or '…'} to {end}" if start and end else str(start or end)
    return ""


def _code(concept: Any) -> str:
    """A status-like concept (Condition.clinicalStatus) by its code: the words are the code."""
    if not isinstance(concept, dict):
        return ""
    codes = [str(c.get("code")) for c in concept.get("coding", []) if isinstance(c, dict)]
    return next((c for c in codes if c), str(concept.get("text", "")))


def _name(patient: Json) -> str:
    for name in patient.get("name", []):
        if not isinstance(name, dict):
            continue
        text = name.get("text") or " ".join(
            [*(str(g) for g in name.get("given", [])), str(name.get("family", ""))]
        )
        if text.strip():
            return str(text).strip()
    return ""


def _value(resource: Json, displays: Displays) -> str:
    quantity = resource.get("valueQuantity")
    if isinstance(quantity, dict):
        comparator = quantity.get("comparator", "")
        unit = quantity.get("unit") or quantity.get("code") or ""
        return f"{comparator}{quantity.get('value', '')} {unit}".strip()
    for name in ("valueInteger", "valueDecimal", "valueString", "valueDateTime"):
        if name in resource:
            return str(resource[name])
    if "valueBoolean" in resource:
        return "yes" if resource["valueBoolean"] else "no"
    if "valueCodeableConcept" in resource:
        return displays.concept(resource["valueCodeableConcept"])
    return ""


def summarise(reference: str, resource: Json, displays: Displays) -> Evidence:
    """What a coordinator needs to see of one evidence resource."""
    rtype = str(resource.get("resourceType", reference.split("/")[0]))
    facts: list[tuple[str, str]] = []

    def add(label: str, value: str) -> None:
        if value:
            facts.append((label, value))

    if rtype == "Patient":
        title = "Patient"
        add("name", _name(resource))
        add("born", str(resource.get("birthDate", "")))
        add("gender", str(resource.get("gender", "")))
        if "deceasedBoolean" in resource or "deceasedDateTime" in resource:
            deceased = resource.get("deceasedDateTime") or resource.get("deceasedBoolean")
            add("deceased", "yes" if deceased is True else str(deceased))
    else:
        code = (
            resource.get("code")
            or resource.get("type")
            or resource.get("medicationCodeableConcept")
        )
        if isinstance(code, list):
            code = code[0] if code else None
        title = displays.concept(code) or rtype
        add("value", _value(resource, displays))
        for component in resource.get("component", []):
            if isinstance(component, dict):
                add(displays.concept(component.get("code")), _value(component, displays))
        sites = [displays.concept(site) for site in resource.get("bodySite", [])]
        add("body site", "; ".join(s for s in sites if s))
        add("status", str(resource.get("status") or _code(resource.get("clinicalStatus"))))
        if rtype == "ServiceRequest":
            add("intent", str(resource.get("intent", "")))
        add(
            "date",
            _date(
                resource,
                "effectiveDateTime",
                "effectivePeriod",
                "performedDateTime",
                "performedPeriod",
                "onsetDateTime",
                "onsetPeriod",
                "occurrenceDateTime",
                "occurrencePeriod",
                "recordedDate",
                "authoredOn",
                "issued",
                "date",
                "period",
            ),
        )
    return Evidence(reference, title, tuple(facts))


def unavailable(reference: str, why: str) -> Evidence:
    return Evidence(reference, why, (), available=False)


async def read_evidence(
    client: FhirClient, references: Iterable[str], displays: Displays
) -> dict[str, Evidence]:
    """Every referenced resource, read with a few ``_id`` searches per type."""
    by_type: dict[str, list[str]] = {}
    for reference in dict.fromkeys(references):
        rtype, _, rid = reference.partition("/")
        if rtype and rid:
            by_type.setdefault(rtype, []).append(rid)
    found: dict[str, Json] = {}

    async def search(rtype: str, ids: list[str]) -> None:
        async for resource in client.search(rtype, [("_id", ",".join(ids))]):
            if resource.get("resourceType") == rtype and resource.get("id") in ids:
                found[f"{rtype}/{resource['id']}"] = resource

    await asyncio.gather(
        *(
            search(rtype, ids[start : start + IDS_PER_SEARCH])
            for rtype, ids in by_type.items()
            for start in range(0, len(ids), IDS_PER_SEARCH)
        )
    )
    return {
        f"{rtype}/{rid}": (
            summarise(f"{rtype}/{rid}", found[f"{rtype}/{rid}"], displays)
            if f"{rtype}/{rid}" in found
            else unavailable(f"{rtype}/{rid}", "no longer on the FHIR server")
        )
        for rtype, ids in by_type.items()
        for rid in ids
    }
