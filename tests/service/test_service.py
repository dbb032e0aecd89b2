"""The service end to end: real HTTP, real FHIR server, real SMTP, real webhook receiver."""

from __future__ import annotations

import csv
import email
import hashlib
import hmac
import io
import itertools
import json
import time
import uuid
from typing import Any

import httpx
import pytest

from service.fhir.client import FhirClient
from service.fhir.subscriptions import install, subscription_resources
from service.ruleset.loader import RuleSet, load_ruleset
from tests.conftest import MAPPINGS_DIR, RULES_DIR
from tests.integration.conftest import LoadedPatients, fhir_get, search_all
from tests.integration.servers import SekmetServer
from tests.service.conftest import (
    NOTIFY_KEY,
    WEBHOOK_SECRET,
    Helpers,
    RunningService,
    run,
    wait_for,
)

pytestmark = pytest.mark.integration
_prefix = itertools.count()


def patients(sekmet: SekmetServer) -> LoadedPatients:
    return LoadedPatients(sekmet.base_url, f"s{next(_prefix)}{uuid.uuid4().hex[:4]}x")


def candidate_of(loaded: LoadedPatients) -> str:
    return next(pid for pid, t in loaded.tests.items() if t.id == "candidate")


def alerts_for(
    helpers: Helpers, patient_id: str, trial: str = "relieve"
) -> tuple[list[Any], list[Any]]:
    """The webhooks and e-mails about one patient for one trial (every trial is served)."""
    hooks = [
        (h, b)
        for h, b in helpers.inbox.webhooks
        if json.loads(b).get("patient") == f"Patient/{patient_id}"
        and json.loads(b).get("trial") == trial
    ]
    mails = [
        m
        for m in helpers.inbox.emails
        if f"Patient/{patient_id}".encode() in m and f"[prescreen] {trial}:".encode() in m
    ]
    return hooks, mails


def test_operations_and_authentication(service: RunningService, helpers: Helpers) -> None:
    with httpx.Client(base_url=service.url) as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        assert anonymous.get("/readyz").json() == {"database": "ok", "fhir": "ok"}
        assert "prescreen_screenings" in anonymous.get("/metrics").text
        assert "/screenings" in anonymous.get("/openapi.json").json()["paths"]
        assert anonymous.get("/candidates").status_code == 401
        assert anonymous.get("/candidates", headers={"X-API-Key": "wrong"}).status_code == 401
    with service.client("reader-key") as reader:
        assert reader.get("/candidates").status_code == 200
        denied = reader.post("/screenings", json={"trial": "relieve", "patients": ["x"]})
        assert denied.status_code == 403
    now = int(time.time())
    claims = {
        "iss": "https://idp.example",
        "aud": "prescreen",
        "sub": "engine",
        "exp": now + 60,
        "scope": "candidates runs",
    }
    good = helpers.keys.sign(claims)
    with httpx.Client(base_url=service.url) as oauth:
        assert (
            oauth.get("/candidates", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        )
        expired = helpers.keys.sign({**claims, "exp": now - 10})
        assert (
            oauth.get("/candidates", headers={"Authorization": f"Bearer {expired}"}).status_code
            == 401
        )
        other = helpers.keys.sign({**claims, "aud": "someone-else"})
        assert (
            oauth.get("/candidates", headers={"Authorization": f"Bearer {other}"}).status_code
            == 401
        )
    with service.client() as client:
        huge = client.post(
            "/screenings",
            content=b"{" + b" " * 300_000 + b"}",
            headers={"Content-Type": "application/json"},
        )
        assert huge.status_code == 413


def test_on_demand_screening_writes_back_and_alerts_once(
    service: RunningService, sekmet: SekmetServer, helpers: Helpers
) -> None:
    loaded = patients(sekmet)
    patient = candidate_of(loaded)
    with service.client() as client:
        answer = client.post(
            "/screenings", json={"trial": "relieve", "patients": [patient], "as_of": "2026-06-15"}
        )
        assert answer.status_code == 200
        (verdict,) = answer.json()["verdicts"]
        assert verdict["verdict"] == "candidate" and verdict["patient"] == f"Patient/{patient}"
        again = client.post(
            "/screenings", json={"trial": "relieve", "patients": [patient], "as_of": "2026-06-15"}
        )
        assert again.status_code == 200
    subjects = search_all(
        sekmet.base_url,
        "ResearchSubject",
        {"_tag": f"urn:prescreen:key|NCT06746103/Patient/{patient}"},
    )
    assert [s["status"] for s in subjects] == ["candidate"]
    hooks, mails = wait_for(
        lambda: (lambda h, m: (h, m) if h and m else None)(*alerts_for(helpers, patient))
    )
    time.sleep(0.5)
    hooks, mails = alerts_for(helpers, patient)
    assert len(hooks) == 1 and len(mails) == 1  # exactly once, though screened twice
    headers, body = hooks[0]
    expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["x-prescreen-signature"] == expected
    assert json.loads(body)["status"] == "candidate"
    # The alert links to the web worklist's page for this patient and trial.
    page = f"{service.url}/ui/patients/{patient}?trial=relieve"
    assert json.loads(body)["page"] == page
    message = email.message_from_bytes(mails[0])
    assert message["To"] == "coordinator@hospital.example"
    assert message["Subject"] == "[prescreen] relieve: new candidate"
    assert f"Patient/{patient}" in message.get_payload()
    assert page in message.get_payload()


def test_subscription_notification_rescreens_and_alerts_exactly_once(
    service: RunningService, sekmet: SekmetServer, helpers: Helpers, relieve: RuleSet
) -> None:
    ssrs = load_ruleset(RULES_DIR / "ssrs.yaml", MAPPINGS_DIR)
    resources = subscription_resources(
        [relieve, ssrs], f"{service.url}/notifications", [f"X-API-Key: {NOTIFY_KEY}"], 40
    )
    # The union of both trials' searches: one Patient subscription, each search once.
    criteria = [r["criteria"] for r in resources]
    assert len(set(criteria)) == len(criteria) == len({r["id"] for r in resources})
    assert sum(c.startswith("Patient?") for c in criteria) == 1
    assert any(c.startswith("Encounter?") for c in criteria)  # SSRS reads visits
    assert any(c.startswith("MedicationRequest?") for c in criteria)  # RELIEVE reads orders

    async def setup() -> None:
        async with FhirClient(sekmet.base_url) as client:
            await install(client, resources)

    run(setup())
    # A new patient arrives on the FHIR server; nobody calls prescreen. Screened as of today,
    # the June pain score is too old: a potential candidate.
    loaded = patients(sekmet)
    patient = candidate_of(loaded)
    key = f"urn:prescreen:key|NCT06746103/Patient/{patient}"

    def subject_status() -> str | None:
        found = search_all(sekmet.base_url, "ResearchSubject", {"_tag": key})
        assert len(found) <= 1
        return found[0]["status"] if found else None

    assert wait_for(subject_status) == "potential-candidate"
    wait_for(lambda: all(alerts_for(helpers, patient)))
    # Every served trial screens the patient: SSRS alerts on its own (no KPS yet: potential).
    ssrs_hooks, ssrs_mails = wait_for(
        lambda: (lambda h, m: (h, m) if h and m else None)(*alerts_for(helpers, patient, "ssrs"))
    )
    assert [json.loads(b)["status"] for _h, b in ssrs_hooks] == ["potential-candidate"]
    assert len(ssrs_mails) == 1
    # Today's pain score arrives: upgraded to candidate, which alerts once more. (The June
    # survival estimate is older than its 90-day window by now: a fresh one comes first, which
    # alone changes nothing.)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    survival = {
        "resourceType": "Observation",
        "id": f"{patient}-survival-today",
        "status": "final",
        "subject": {"reference": f"Patient/{patient}"},
        "code": {"coding": [{"system": "urn:prescreen:relieve", "code": "estimated-survival"}]},
        "effectiveDateTime": today,
        "valueQuantity": {"value": 9, "unit": "months"},
    }
    headers = {"Content-Type": "application/fhir+json"}
    httpx.put(f"{sekmet.base_url}/Observation/{survival['id']}", json=survival, headers=headers)
    pain = {
        "resourceType": "Observation",
        "id": f"{patient}-nrs-today",
        "status": "final",
        "subject": {"reference": f"Patient/{patient}"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
        "effectiveDateTime": today,
        "valueInteger": 8,
        "component": [
            {
                "code": {"coding": [{"system": "urn:prescreen:relieve", "code": "pain-type"}]},
                "valueCodeableConcept": {
                    "coding": [{"system": "urn:prescreen:relieve", "code": "axial-triggered"}]
                },
            }
        ],
    }
    httpx.put(f"{sekmet.base_url}/Observation/{pain['id']}", json=pain, headers=headers)
    wait_for(lambda: subject_status() == "candidate")
    wait_for(lambda: len(alerts_for(helpers, patient)[0]) == 2)
    # A change that alters nothing: re-screened, no new alert, still one ResearchSubject.
    pain["valueInteger"] = 9
    httpx.put(f"{sekmet.base_url}/Observation/{pain['id']}", json=pain, headers=headers)
    time.sleep(3)
    hooks, mails = alerts_for(helpers, patient)
    assert [json.loads(b)["status"] for _h, b in hooks] == ["potential-candidate", "candidate"]
    assert len(mails) == 2
    assert len(alerts_for(helpers, patient, "ssrs")[0]) == 1  # still potential: no new alert
    assert subject_status() == "candidate"
    with service.client() as client:
        listed = client.get(
            "/candidates", params={"trial": "relieve", "status": "candidate"}
        ).json()
    assert f"Patient/{patient}" in {c["patient"] for c in listed["candidates"]}


def test_notification_payload_forms(service: RunningService, sekmet: SekmetServer) -> None:
    loaded = patients(sekmet)
    patient = candidate_of(loaded)
    condition = next(
        r
        for r in loaded.resources
        if r["resourceType"] == "Condition" and r["subject"]["reference"] == f"Patient/{patient}"
    )
    headers = {"X-API-Key": NOTIFY_KEY, "Content-Type": "application/fhir+json"}
    with httpx.Client(base_url=service.url, headers=headers) as hook:
        assert hook.post("/notifications", json=condition).status_code == 200  # full resource
        assert (
            hook.post(
                "/notifications", json={"resourceType": "Condition", "id": condition["id"]}
            ).status_code
            == 200
        )
        assert (
            hook.put(f"/notifications/Condition/{condition['id']}", json=condition).status_code
            == 200
        )
        assert hook.post("/notifications").status_code == 200  # empty ping
        assert hook.post("/notifications", content=b"{not json").status_code == 400
    key = f"urn:prescreen:key|NCT06746103/Patient/{patient}"
    assert wait_for(lambda: search_all(sekmet.base_url, "ResearchSubject", {"_tag": key}))


def test_cds_hooks(service: RunningService, sekmet: SekmetServer, helpers: Helpers) -> None:
    loaded = patients(sekmet)
    patient = candidate_of(loaded)
    with httpx.Client(base_url=service.url) as ehr:
        discovery = ehr.get("/cds-services").json()["services"][0]
        assert discovery["hook"] == "patient-view" and "patient" in discovery["prefetch"]
        url = f"{service.url}/cds-services/{discovery['id']}"
        mine = [r for r in loaded.resources if r["id"].startswith(patient.removesuffix("p"))]
        prefetch = {"patient": next(r for r in mine if r["resourceType"] == "Patient")}
        for key, template in discovery["prefetch"].items():
            if key != "patient":
                rtype = template.split("?")[0]
                prefetch[key] = {
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "entry": [{"resource": r} for r in mine if r["resourceType"] == rtype],
                }
        body = {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/1", "patientId": patient},
            "prefetch": prefetch,
        }
        now = int(time.time())
        claims = {
            "iss": "https://ehr.example",
            "aud": url,
            "exp": now + 60,
            "iat": now,
            "jti": uuid.uuid4().hex,
        }
        token = helpers.keys.sign(claims)
        cards = ehr.post(url, json=body, headers={"Authorization": f"Bearer {token}"}).json()[
            "cards"
        ]
        # As of today the June pain score is out of its window: a potential candidate, with the
        # reason in the card. Every served trial gives its own card.
        assert sorted(c["summary"] for c in cards) == [
            "RELIEVE (NCT06746103): potential candidate",
            "SSRS (NCT04218617): potential candidate",
        ]
        cards = [c for c in cards if c["summary"].startswith("RELIEVE")]
        assert "**pain-nrs**" in cards[0]["detail"]
        # Without prefetch the service reads the FHIR server the EHR names.
        fetch = {**body, "prefetch": None, "fhirServer": sekmet.base_url}
        token = helpers.keys.sign({**claims, "jti": uuid.uuid4().hex})
        fetched = ehr.post(url, json=fetch, headers={"Authorization": f"Bearer {token}"}).json()
        assert cards[0]["summary"] in [c["summary"] for c in fetched["cards"]]
        for bad in (
            helpers.keys.sign({**claims, "aud": "https://elsewhere"}),
            helpers.keys.sign({**claims, "iss": "https://rogue.example"}),
            helpers.keys.sign({**claims, "exp": now - 5}),
            token[:-4] + "AAAA",
        ):
            assert (
                ehr.post(url, json=body, headers={"Authorization": f"Bearer {bad}"}).status_code
                == 401
            )
        assert ehr.post(url, json=body).status_code == 401


def test_ndjson_run_with_paged_results(service: RunningService, tmp_path: Any) -> None:
    from tests.conftest import SAMPLE_DIR
    from tests.integration.test_live import offline

    expected = offline(SAMPLE_DIR, tmp_path / "offline")
    with service.client() as client:
        started = client.post(
            "/runs",
            json={
                "trial": "relieve",
                "source": "ndjson",
                "path": str(SAMPLE_DIR),
                "as_of": "2026-06-15",
            },
        )
        assert started.status_code == 202
        run_id = started.json()["id"]
        done = wait_for(
            lambda: (lambda r: r if r["status"] == "done" else None)(
                client.get(f"/runs/{run_id}").json()
            ),
            180,
        )
        assert done["progress"] == {"done": 300, "total": 300}
        page1 = client.get(f"/runs/{run_id}/results", params={"limit": 200}).json()["verdicts"]
        page2 = client.get(f"/runs/{run_id}/results", params={"offset": 200, "limit": 200}).json()[
            "verdicts"
        ]
        assert len(page1) == 200 and len(page2) == 100
        assert {v["patient"]: v for v in page1 + page2} == expected
        counts: dict[str, int] = {}
        for verdict in page1 + page2:
            counts[verdict["verdict"]] = counts.get(verdict["verdict"], 0) + 1
        assert counts == done["counts"]
        # The run kept who each patient is: the screening log names every one.
        log = client.get("/candidates.csv", params={"trial": "relieve", "status": "any"})
        assert log.status_code == 200 and log.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(log.content.decode("utf-8-sig"))))
        assert {r["patient"] for r in rows} >= set(expected)
        first = json.loads((SAMPLE_DIR / "Patient.ndjson").read_text().splitlines()[0])
        (mine,) = [r for r in rows if r["patient"] == f"Patient/{first['id']}"]
        name = first["name"][0]
        assert mine["name"] == f"{name['family']}, {' '.join(name['given'])}"
        assert mine["mrn"] == first["identifier"][-1]["value"]
        assert all(r["name"] and r["mrn"] for r in rows)
    # Reading the worklist is enough to download it; no key, no log.
    with service.client("reader-key") as reader:
        assert reader.get("/candidates.csv").status_code == 200
    with service.client("not-a-key") as stranger:
        assert stranger.get("/candidates.csv").status_code == 401


def test_coordinator_decision_reaches_the_server_and_survives_rescreening(
    service: RunningService, sekmet: SekmetServer
) -> None:
    loaded = patients(sekmet)
    patient = candidate_of(loaded)
    with service.client() as client:
        client.post(
            "/screenings", json={"trial": "relieve", "patients": [patient], "as_of": "2026-06-15"}
        )
        rows = client.get("/candidates", params={"trial": "relieve"}).json()["candidates"]
        row = next(r for r in rows if r["patient"] == f"Patient/{patient}")
        decided = client.post(f"/candidates/{row['id']}/decision", json={"status": "eligible"})
        assert decided.status_code == 200 and decided.json()["decided_by"] == "engine"
        client.post(
            "/screenings", json={"trial": "relieve", "patients": [patient], "as_of": "2026-06-15"}
        )
        rows = client.get("/candidates", params={"trial": "relieve", "status": "eligible"}).json()[
            "candidates"
        ]
    assert f"Patient/{patient}" in {r["patient"] for r in rows}
    key = f"urn:prescreen:key|NCT06746103/Patient/{patient}"
    (subject,) = search_all(sekmet.base_url, "ResearchSubject", {"_tag": key})
    assert subject["status"] == "eligible"
    assert (
        fhir_get(f"{sekmet.base_url}/ResearchSubject/{subject['id']}").json()["status"]
        == "eligible"
    )
