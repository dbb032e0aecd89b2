"""``prescreen load``: every transaction self-sufficient, whatever the types and their order.

The transactions are recorded on their way out (a server need not check references on write
to be a loader's target, and the suite's servers do not: what is checked here is what a server
that does check would be sent). Loading into the real servers: tests/integration/test_load.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.errors import SourceError
from service.fhir.client import FhirClient, Json
from service.fhir.loader import (
    SkippedLine,
    folder_readers,
    literal_target,
    load_readers,
    load_resources,
    memory_readers,
    plan_load,
    reference_objects,
)

SYNTHEA_DIR = Path(__file__).resolve().parent.parent / "data" / "synthea"


class Recorder(FhirClient):
    """Takes the transactions instead of sending them."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9/fhir")  # never contacted
        self.transactions: list[list[Json]] = []

    async def bundle(self, bundle_type: str, entries: list[Json]) -> Json:
        assert bundle_type == "transaction"
        self.transactions.append(entries)
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": []}


def record(resources: list[Json], per_bundle: int = 200) -> Recorder:
    recorder = Recorder()
    asyncio.run(load_resources(recorder, resources, per_bundle=per_bundle))
    return recorder


def assert_self_sufficient(recorder: Recorder, source: set[str]) -> None:
    """Each reference to a resource of the source goes to one written before or alongside."""
    written: set[str] = set()
    for entries in recorder.transactions:
        here = {entry["request"]["url"] for entry in entries}
        for entry in entries:
            assert entry["request"]["method"] == "PUT"
            for reference in reference_objects(entry["resource"]):
                target = literal_target(str(reference["reference"]))
                if target is not None and "/".join(target) in source:
                    assert "/".join(target) in written | here, (entry["request"]["url"], target)
        written |= here
    assert written == source


def ref(text: str) -> dict[str, str]:
    return {"reference": text}


def resource(rtype: str, rid: str, **elements: Any) -> Json:
    return {"resourceType": rtype, "id": rid, **elements}


def keys(resources: list[Json]) -> set[str]:
    return {f"{r['resourceType']}/{r['id']}" for r in resources}


def test_types_are_loaded_after_the_types_they_reference_whatever_they_are() -> None:
    # None of these types is named anywhere in the loader; they come in the worst order.
    resources = [
        resource("ExplanationOfBenefit", "e1", claim=ref("Claim/c1"), patient=ref("Patient/p")),
        resource("Claim", "c1", insurance=[{"coverage": ref("Coverage/cv")}]),
        resource("Coverage", "cv", payor=[ref("Organization/o")]),
        resource("Encounter", "en", location=[{"location": ref("Location/l")}]),
        resource("Location", "l", managingOrganization=ref("Organization/o")),
        resource("PractitionerRole", "r", location=[ref("Location/l")]),
        resource("Organization", "o"),
        resource("Patient", "p", managingOrganization=ref("Organization/o")),
    ]
    plan = plan_load(memory_readers(resources))
    order = [rtype for group in plan.order for rtype in group]
    for before, after in [
        ("Organization", "Location"),
        ("Location", "Encounter"),
        ("Location", "PractitionerRole"),
        ("Coverage", "Claim"),
        ("Claim", "ExplanationOfBenefit"),
        ("Patient", "ExplanationOfBenefit"),
    ]:
        assert order.index(before) < order.index(after)
    assert_self_sufficient(record(resources, per_bundle=1), keys(resources))


def test_conditional_references_are_written_as_the_literal_ones_they_resolve_to() -> None:
    npi = "http://hl7.org/fhir/sid/us-npi"
    resources = [
        resource(
            "Encounter",
            "en",
            participant=[{"individual": ref(f"Practitioner?identifier={npi}|123")}],
            location=[{"location": ref("Location?identifier=urn:site|north")}],
            serviceProvider=ref("Organization?identifier=urn:org|twice"),  # ambiguous
            basedOn=[ref("ServiceRequest?identifier=urn:sr|absent")],  # not in the source
            partOf=ref("Encounter?status=finished"),  # not by identifier: for a server
        ),
        resource("Practitioner", "doc", identifier=[{"system": npi, "value": "123"}]),
        resource("Location", "north-site", identifier=[{"system": "urn:site", "value": "north"}]),
        resource("Organization", "o1", identifier=[{"system": "urn:org", "value": "twice"}]),
        resource("Organization", "o2", identifier=[{"system": "urn:org", "value": "twice"}]),
    ]
    original = json.dumps(resources)
    recorder = record(resources)
    (encounter,) = [
        entry["resource"]
        for entries in recorder.transactions
        for entry in entries
        if entry["resource"]["resourceType"] == "Encounter"
    ]
    assert encounter["participant"][0]["individual"] == ref("Practitioner/doc")
    assert encounter["location"][0]["location"] == ref("Location/north-site")
    assert encounter["serviceProvider"] == ref("Organization?identifier=urn:org|twice")
    assert encounter["basedOn"] == [ref("ServiceRequest?identifier=urn:sr|absent")]
    assert encounter["partOf"] == ref("Encounter?status=finished")
    assert json.dumps(resources) == original  # the caller's resources are left as they were
    assert_self_sufficient(recorder, keys(resources))


def test_resources_of_a_reference_cycle_wait_for_what_they_reference() -> None:
    # Encounters partOf the next one, listed children first; Observations and reports that
    # reference each other (a cycle of two types); a reference to nothing in the source.
    encounters = [
        resource("Encounter", f"e{n}", partOf=ref(f"Encounter/e{n + 1}")) for n in range(9)
    ]
    encounters.append(resource("Encounter", "e9", partOf=ref("Encounter/elsewhere")))
    # Two that name each other: only one transaction can hold them.
    encounters.append(resource("Encounter", "x", partOf=ref("Encounter/y")))
    encounters.append(resource("Encounter", "y", partOf=ref("Encounter/x")))
    observations = [
        resource("Observation", "panel", hasMember=[ref("Observation/m1"), ref("Observation/m2")]),
        resource("Observation", "m1", derivedFrom=[ref("DiagnosticReport/dr")]),
        resource("Observation", "m2"),
        resource("DiagnosticReport", "dr", result=[ref("Observation/m2")]),
    ]
    resources = [*encounters, *observations]
    plan = plan_load(memory_readers(resources))
    assert plan.cyclic["Encounter"] == {"Encounter"}
    assert plan.cyclic["Observation"] == {"Observation", "DiagnosticReport"}
    for per_bundle in (1, 3, 200):
        assert_self_sufficient(record(resources, per_bundle), keys(resources))


def test_a_folder_is_read_as_a_stream(tmp_path: Path) -> None:
    lines = [
        json.dumps(resource("Observation", f"o{n}", subject=ref("Patient/p"))) for n in range(500)
    ]
    (tmp_path / "Observation.ndjson").write_text("\n".join(lines) + "\n")
    (tmp_path / "Patient.ndjson").write_text(json.dumps(resource("Patient", "p")) + "\n")
    readers = folder_readers(tmp_path)
    handed_out = {"Observation": 0}
    inner = readers["Observation"]

    def counting() -> Iterator[Json]:
        for item in inner():
            handed_out["Observation"] += 1
            yield item

    readers["Observation"] = counting
    recorder = Recorder()
    seen_at_each_transaction: list[int] = []
    original = recorder.bundle

    async def bundle(bundle_type: str, entries: list[Json]) -> Json:
        seen_at_each_transaction.append(handed_out["Observation"])
        return await original(bundle_type, entries)

    recorder.bundle = bundle  # type: ignore[method-assign]
    plan = plan_load(readers)
    assert plan.resources == 501 and handed_out["Observation"] == 500  # one pass to survey
    assert asyncio.run(load_readers(recorder, readers, plan=plan, per_bundle=50)) == 501
    # Each transaction is sent as soon as it is full: never more than one in memory.
    loading = [seen - 500 for seen in seen_at_each_transaction]
    assert loading[:3] == [49, 99, 149]  # the Patient and 49 Observations, then 50 at a time


def test_an_unreadable_line_stops_before_anything_is_sent(tmp_path: Path) -> None:
    (tmp_path / "Patient.ndjson").write_text(json.dumps(resource("Patient", "p")) + "\n{cut\n")
    with pytest.raises(SourceError, match=r"Patient\.ndjson:2"):
        plan_load(folder_readers(tmp_path))


@pytest.mark.parametrize(
    ("rtype", "rid", "problem"),
    [
        ("Patient", "../Observation/x", "not a FHIR id"),
        ("Patient", "x?_format=xml", "not a FHIR id"),
        ("Patient", "..", "not a FHIR id"),
        ("Patient?_format=xml", "x", "not a FHIR resource type"),
        ("Patient/../Observation", "x", "not a FHIR resource type"),
    ],
)
def test_a_type_or_id_that_cannot_make_its_url_is_refused_before_anything_is_sent(
    tmp_path: Path, rtype: str, rid: str, problem: str
) -> None:
    """N7: the id and resourceType went into ``PUT [type]/[id]`` unchecked."""
    lines = [json.dumps(resource("Patient", "p")), json.dumps(resource(rtype, rid))]
    (tmp_path / "Patient.ndjson").write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceError, match=rf"Patient\.ndjson:2: .*{problem}"):
        plan_load(folder_readers(tmp_path))
    recorder = Recorder()
    with pytest.raises(SourceError, match=problem):
        asyncio.run(load_resources(recorder, [resource("Patient", "p"), resource(rtype, rid)]))
    assert recorder.transactions == []


def test_a_line_too_long_is_left_out_and_said_where(tmp_path: Path) -> None:
    """N12 for prescreen load: the line is skipped unread, the others loaded."""
    limit = 4 << 20
    huge = json.dumps(resource("Observation", "huge", note=[{"text": "x" * limit}]))
    lines = [json.dumps(resource("Patient", "p")), huge, json.dumps(resource("Patient", "q"))]
    (tmp_path / "Patient.ndjson").write_text("\n".join(lines) + "\n")
    skipped: set[SkippedLine] = set()
    readers = folder_readers(tmp_path, limit, skipped)
    plan = plan_load(readers)
    recorder = Recorder()
    assert asyncio.run(load_readers(recorder, readers, plan=plan)) == 2
    assert [(s.file, s.line, s.kind) for s in skipped] == [("Patient.ndjson", 2, "line-too-long")]


def test_a_synthea_export_loads_in_self_sufficient_transactions() -> None:
    readers = folder_readers(SYNTHEA_DIR)
    plan = plan_load(readers)
    order = [rtype for group in plan.order for rtype in group]
    for shared in ("Organization", "Location", "Practitioner"):
        assert order.index(shared) < order.index("Encounter")
    assert order.index("Claim") < order.index("ExplanationOfBenefit") < order.index("Provenance")
    recorder = Recorder()
    written = asyncio.run(load_readers(recorder, readers, plan=plan, per_bundle=100))
    assert written == plan.resources
    sent = [entry["resource"] for entries in recorder.transactions for entry in entries]
    conditional = [
        str(r["reference"])
        for resource in sent
        for r in reference_objects(resource)
        if "?" in str(r["reference"])
    ]
    assert conditional == []  # every Location?identifier=… of the export was resolved here
    assert_self_sufficient(recorder, keys(sent))
