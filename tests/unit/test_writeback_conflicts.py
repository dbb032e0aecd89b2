"""412 on If-Match: the subject is read again and the write re-planned (respx)."""

from __future__ import annotations

import asyncio
import json
from datetime import date
from typing import Any

import httpx
import respx

from service.fhir.client import FhirClient, RetryPolicy
from service.fhir.codesystems import code_systems_for
from service.fhir.connect import ServerAbilities
from service.fhir.writeback import FINGERPRINT_URL, WRITTEN_STATUS_URL, WriteBack
from service.ruleset.evaluate import CriterionResult, PatientVerdict
from service.ruleset.loader import RuleSet

BASE = "https://ehr.example/fhir"
SYSTEM = "urn:prescreen:research-subject"


def verdict(relieve: RuleSet, status: str) -> PatientVerdict:
    criteria = tuple(
        CriterionResult(c.id, c.kind, "unknown" if c.manual else "met", (), "r", manual=c.manual)
        for c in relieve.criteria
    )
    return PatientVerdict("p1", status, criteria)  # type: ignore[arg-type]


def subject(status: str, version: str, written: str = "candidate") -> dict[str, Any]:
    return {
        "resourceType": "ResearchSubject",
        "id": "rs1",
        "meta": {"versionId": version},
        "identifier": [{"system": SYSTEM, "value": "NCT06746103/Patient/p1"}],
        "status": status,
        "study": {"reference": "ResearchStudy/s1"},
        "individual": {"reference": "Patient/p1"},
        "extension": [
            {"url": WRITTEN_STATUS_URL, "valueCode": written},
            {"url": FINGERPRINT_URL, "valueString": "old"},
        ],
    }


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }


def writer(relieve: RuleSet, client: FhirClient) -> WriteBack:
    abilities = ServerAbilities(
        "4.0.1",
        batch=True,
        transaction=True,
        interactions={"ResearchSubject": {"create", "update"}},
        search_params={"ResearchSubject": {"identifier"}, "ResearchStudy": {"identifier"}},
    )
    return WriteBack(client, relieve, date(2026, 6, 15), SYSTEM, abilities=abilities)


def run_conflict(relieve: RuleSet, after_conflict: dict[str, Any]) -> list[httpx.Request]:
    study = {"resourceType": "ResearchStudy", "id": "s1"}
    # The server has prescreen's CodeSystems already: nothing to publish.
    respx.get(f"{BASE}/CodeSystem").mock(
        return_value=httpx.Response(200, json=searchset(*code_systems_for(relieve)))
    )
    respx.get(f"{BASE}/ResearchStudy").mock(return_value=httpx.Response(200, json=searchset(study)))
    respx.get(f"{BASE}/ResearchSubject", params={"_tag": "urn:prescreen:study|NCT06746103"}).mock(
        return_value=httpx.Response(200, json=searchset(subject("candidate", "1")))
    )
    respx.get(
        f"{BASE}/ResearchSubject", params={"identifier": f"{SYSTEM}|NCT06746103/Patient/p1"}
    ).mock(return_value=httpx.Response(200, json=searchset(after_conflict)))
    transactions = respx.post(f"{BASE}/").mock(
        side_effect=[
            httpx.Response(
                412,
                json={
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {"severity": "error", "code": "conflict", "diagnostics": "version mismatch"}
                    ],
                },
            ),
            httpx.Response(
                200, json={"resourceType": "Bundle", "type": "transaction-response", "entry": []}
            ),
        ]
    )

    async def go() -> None:
        async with FhirClient(BASE, retry=RetryPolicy(attempts=1)) as client:
            w = writer(relieve, client)
            await w.prepare()
            await w.write([verdict(relieve, "potential-candidate")])
            assert w.stats.conflicts_retried == 1

    asyncio.run(go())
    return [call.request for call in transactions.calls]


@respx.mock
def test_a_person_who_decided_meanwhile_wins(relieve: RuleSet) -> None:
    sent = run_conflict(relieve, subject("eligible", "2"))
    assert len(sent) == 1  # re-read, saw a person's status, wrote nothing more


@respx.mock
def test_a_stale_version_is_retried_with_the_new_one(relieve: RuleSet) -> None:
    sent = run_conflict(relieve, subject("candidate", "2"))
    assert len(sent) == 2
    first, second = (json.loads(r.content)["entry"][0]["request"] for r in sent)
    assert first["ifMatch"] == 'W/"1"' and second["ifMatch"] == 'W/"2"'
