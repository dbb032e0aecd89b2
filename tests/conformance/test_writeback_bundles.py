"""The transaction Bundles write-back plans, and the CodeSystems they use (no server needed).

Planning reads nothing from the server: the writer is given what ``prepare`` would have found
(the study, a subject written before).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx

from service import catalog
from service.errors import ConfigError
from service.fhir import codesystems, writeback
from service.fhir.client import FhirClient, Json, RetryPolicy
from service.fhir.codesystems import (
    TERMINOLOGY_DIR,
    code_systems_for,
    criterion_code_system,
    own_code_systems,
    published_criteria_file,
    terminology_dir,
)
from service.fhir.connect import ServerAbilities
from service.fhir.writeback import FINGERPRINT_URL, WRITTEN_STATUS_URL, WriteBack
from service.ruleset.evaluate import CriterionResult, PatientVerdict
from service.ruleset.loader import RuleSet
from service.settings import get_settings

BASE = "https://ehr.example/fhir"
SYSTEM = "urn:prescreen:research-subject"
ABILITIES = ServerAbilities("4.0.1", batch=True, transaction=True)


def verdict(ruleset: RuleSet, patient_id: str, status: str) -> PatientVerdict:
    criteria = tuple(
        CriterionResult(
            c.id,
            c.kind,
            "unknown" if c.manual else "met",
            () if c.manual else (f"Condition/{patient_id}-c", f"Observation/{patient_id}-o"),
            "a reason",
            manual=c.manual,
        )
        for c in ruleset.criteria
    )
    return PatientVerdict(patient_id, status, criteria)  # type: ignore[arg-type]


def written_before(patient_id: str) -> Json:
    """A subject prescreen wrote in an earlier run (results since changed)."""
    return {
        "resourceType": "ResearchSubject",
        "id": "rs1",
        "meta": {"versionId": "3"},
        "identifier": [{"system": SYSTEM, "value": f"NCT06746103/Patient/{patient_id}"}],
        "status": "potential-candidate",
        "study": {"reference": "ResearchStudy/s1"},
        "individual": {"reference": f"Patient/{patient_id}"},
        "extension": [
            {"url": WRITTEN_STATUS_URL, "valueCode": "potential-candidate"},
            {"url": FINGERPRINT_URL, "valueString": "old"},
        ],
    }


@pytest.fixture
def writer(relieve: RuleSet) -> Iterator[WriteBack]:
    client = FhirClient(BASE)
    writer = WriteBack(client, relieve, date(2026, 6, 15), SYSTEM, abilities=ABILITIES)
    writer.study_reference = "ResearchStudy/s1"  # what prepare() found
    writer._remember(written_before("p-old"))
    yield writer
    asyncio.run(client.aclose())


def planned(writer: WriteBack, patient_id: str, status: str) -> Json:
    entries = writer.plan(verdict(writer.ruleset, patient_id, status))
    assert entries is not None
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def test_an_update_has_an_absolute_full_url_on_the_server_base(writer: WriteBack) -> None:
    bundle = planned(writer, "p-old", "candidate")
    subject = bundle["entry"][0]
    assert subject["request"] == {"method": "PUT", "url": "ResearchSubject/rs1", "ifMatch": 'W/"3"'}
    assert subject["fullUrl"] == f"{BASE}/ResearchSubject/rs1"


@pytest.mark.parametrize(("patient_id", "status"), [("p-new", "candidate"), ("p-old", "candidate")])
def test_every_entry_has_an_absolute_or_urn_uuid_full_url(
    writer: WriteBack, patient_id: str, status: str
) -> None:
    bundle = planned(writer, patient_id, status)
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds[-1] == "Provenance"
    for entry in bundle["entry"]:
        full_url = entry.get("fullUrl", "")
        assert full_url.startswith((f"{BASE}/", "urn:uuid:")), entry["resource"]["resourceType"]
    full_urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(full_urls)) == len(full_urls)


def test_a_new_subject_while_the_study_is_being_created_carries_the_study(
    writer: WriteBack,
) -> None:
    writer.study_reference = ""  # prepare() found no study: this run creates it
    bundle = planned(writer, "p-new", "candidate")
    study, subject = bundle["entry"][0], bundle["entry"][1]
    assert study["request"]["method"] == "POST" and "ifNoneExist" in study["request"]
    assert subject["resource"]["study"]["reference"] == study["fullUrl"]
    assert study["fullUrl"].startswith("urn:uuid:")


def observations(bundle: Json) -> list[Json]:
    return [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
    ]


def test_criterion_observations_carry_kind_and_manual_as_coded_components(
    writer: WriteBack,
) -> None:
    found = observations(planned(writer, "p-new", "candidate"))
    expected = {c.id: (c.kind, c.manual) for c in writer.ruleset.criteria}
    got = {}
    for observation in found:
        components = {c["code"]["coding"][0]["code"]: c for c in observation["component"]}
        assert set(components) == {"criterion-kind", "manual"}
        for component in components.values():
            assert component["code"]["coding"][0]["system"] == "urn:prescreen:criterion-attribute"
        kind = components["criterion-kind"]["valueCodeableConcept"]["coding"][0]
        assert kind["system"] == "urn:prescreen:criterion-attribute"
        got[observation["code"]["coding"][0]["code"]] = (
            kind["code"],
            components["manual"]["valueBoolean"],
        )
    assert got == expected
    assert ("inclusion", True) in got.values()  # index-site, consent


def codings(value: Any) -> Iterator[Json]:
    if isinstance(value, dict):
        if isinstance(value.get("system"), str) and "code" in value:
            yield value
        for item in value.values():
            yield from codings(item)
    elif isinstance(value, list):
        for item in value:
            yield from codings(item)


def concept_codes(code_system: Json) -> set[str]:
    def walk(concepts: list[Json]) -> Iterator[str]:
        for concept in concepts:
            yield concept["code"]
            yield from walk(concept.get("concept", []))

    return set(walk(code_system.get("concept", [])))


def test_every_prescreen_code_written_is_in_a_published_code_system(writer: WriteBack) -> None:
    bundles = [planned(writer, "p-new", "candidate"), planned(writer, "p-old", "ineligible")]
    published = {cs["url"]: cs for cs in code_systems_for(writer.ruleset)}
    used = [c for b in bundles for c in codings(b) if c["system"].startswith("urn:prescreen:")]
    assert {c["system"] for c in used} == set(published)
    for coding in used:
        code_system = published[coding["system"]]
        if code_system["content"] == "complete":
            assert coding["code"] in concept_codes(code_system), coding


@pytest.mark.every_trial
@pytest.mark.parametrize("trial", catalog.available_trials(get_settings().rules_dir))
def test_the_published_criterion_code_systems_are_the_rule_sets(trial: str) -> None:
    ruleset = catalog.load_trial(trial, get_settings())
    published = orjson.loads(published_criteria_file(ruleset).read_bytes())
    assert published == criterion_code_system(ruleset), (
        "terminology/criteria/ is out of date: run `python -m service.fhir.codesystems`"
    )


def test_the_own_code_systems_are_the_files_of_terminology(relieve: RuleSet) -> None:
    urls = sorted(cs["url"] for cs in code_systems_for(relieve))
    files = [orjson.loads(p.read_bytes()) for p in sorted(TERMINOLOGY_DIR.glob("*.json"))]
    assert urls == sorted([*(cs["url"] for cs in files), "urn:prescreen:criterion:relieve"])
    assert len({(cs["url"], cs["version"]) for cs in code_systems_for(relieve)}) == len(urls)


def empty_searchset() -> Json:
    return {"resourceType": "Bundle", "type": "searchset", "entry": []}


@respx.mock
def test_a_server_refusing_the_code_systems_costs_a_warning_not_the_run(
    relieve: RuleSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writeback, "_SETTLED", set())  # as a new process: nothing tried yet
    # A 403 for want of a CodeSystem scope: no real test server here enforces that one scope.
    respx.get(f"{BASE}/CodeSystem").mock(return_value=httpx.Response(200, json=empty_searchset()))
    respx.get(f"{BASE}/ResearchStudy").mock(
        return_value=httpx.Response(200, json=empty_searchset())
    )
    refused = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "forbidden"}],
    }
    created = {"resourceType": "Bundle", "type": "transaction-response", "entry": [{}]}
    sent = respx.post(f"{BASE}/").mock(
        side_effect=[httpx.Response(403, json=refused), httpx.Response(200, json=created)]
    )

    async def go() -> WriteBack:
        async with FhirClient(BASE, retry=RetryPolicy(attempts=1)) as client:
            writer = WriteBack(client, relieve, date(2026, 6, 15), SYSTEM, abilities=ABILITIES)
            await writer.prepare()
            return writer

    writer = asyncio.run(go())
    assert writer.stats.code_systems_refused
    assert writer.stats.code_systems_created == 0
    first, second = (orjson.loads(call.request.content) for call in sent.calls)
    assert {e["resource"]["resourceType"] for e in first["entry"]} == {"CodeSystem"}
    assert [e["resource"]["resourceType"] for e in second["entry"]] == ["ResearchStudy"]


def test_an_installed_package_finds_the_code_systems_beside_the_mappings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The container's layout: /app/fhir_mappings and /app/terminology, the package elsewhere.
    app = tmp_path / "app"
    (app / "fhir_mappings").mkdir(parents=True)
    shutil.copytree(TERMINOLOGY_DIR, app / "terminology")
    monkeypatch.setenv("PRESCREEN_MAPPINGS_DIR", str(app / "fhir_mappings"))
    monkeypatch.setattr(codesystems, "TERMINOLOGY_DIR", tmp_path / "site-packages" / "terminology")
    get_settings.cache_clear()  # the settings are read once per process
    try:
        assert terminology_dir() == app / "terminology"
        assert len(own_code_systems()) == len(list(TERMINOLOGY_DIR.glob("*.json")))

        # Neither there nor in the installation: a clear error, not a silent half publication.
        shutil.rmtree(app / "terminology")
        with pytest.raises(ConfigError, match="terminology"):
            terminology_dir()
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
