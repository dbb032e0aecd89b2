"""CDS Hooks 2.0 against the running service: the EHR's JWT (iat, kid, lifetime, jti replay
across replicas), fhirServer confined to the configured servers, prefetch semantics (null,
OperationOutcome), cards, feedback and CORS. The request and card shapes follow the examples of
the CDS Hooks 2.0 specification; the FHIR server is sekmet-fhir, the EHR's JWKS a real host."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from fastapi import HTTPException

from service import catalog
from service.api.cds import normalised_base, read_prefetch
from service.errors import PrescreenError
from service.ruleset.evaluate import Evaluator
from service.ruleset.loader import RuleSet
from service.screening.inmemory import evaluate_resources
from service.settings import get_settings
from service.state.cds_hooks import CdsStore
from service.state.store import Store
from service.web import create_app
from tests.integration.conftest import LoadedPatients, fhir_get
from tests.integration.servers import SekmetServer, free_port
from tests.proxy import RefusingProxy
from tests.service.conftest import Helpers, running_service, service_settings

pytestmark = pytest.mark.integration
SERVICE = "prescreen-patient-view"
_prefix = itertools.count()


@dataclass
class Ehr:
    """One running service and what an EHR needs to call it."""

    url: str
    helpers: Helpers

    @property
    def endpoint(self) -> str:
        return f"{self.url}/cds-services/{SERVICE}"

    def token(self, aud: str | None = None, kid: str | None = "k1", **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": "https://ehr.example",
            "aud": aud or self.endpoint,
            "exp": now + 120,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "tenant": "2ddd6c3a-8e9a-44c6-a305-52111ad302a2",
            **claims,
        }
        payload = {k: v for k, v in payload.items() if v is not None}
        headers = {"kid": kid, "typ": "JWT"} if kid else {"typ": "JWT"}
        return jwt.encode(payload, self.helpers.keys.private, algorithm="RS384", headers=headers)

    def call(
        self, body: dict[str, Any], token: str | None = None, **headers: str
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token()}", **headers}
        return httpx.post(self.endpoint, json=body, headers=headers, timeout=120)

    def feedback(self, body: dict[str, Any], token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token(self.endpoint + '/feedback')}"}
        return httpx.post(f"{self.endpoint}/feedback", json=body, headers=headers, timeout=120)


@pytest.fixture(scope="module")
def loaded(sekmet: SekmetServer) -> LoadedPatients:
    return LoadedPatients(sekmet.base_url, f"h{next(_prefix)}{uuid.uuid4().hex[:4]}x")


@pytest.fixture
def candidate(loaded: LoadedPatients) -> str:
    return next(pid for pid, test in loaded.tests.items() if test.id == "candidate")


@pytest.fixture
def ehr(sekmet: SekmetServer, helpers: Helpers, database_url: str) -> Iterator[Ehr]:
    port = free_port()
    settings = service_settings(
        sekmet, helpers, database_url, port, cors_origins="https://ehr.example"
    )
    with running_service(settings, port) as running:
        yield Ehr(running.url, helpers)


def templates(ehr: Ehr) -> dict[str, str]:
    services = httpx.get(f"{ehr.url}/cds-services", timeout=60).json()["services"]
    return dict(services[0]["prefetch"])


def prefetch_as_an_ehr_would(ehr: Ehr, base_url: str, patient: str) -> dict[str, Any]:
    """Run every template against the FHIR server; an empty answer is sent as null."""
    prefetch: dict[str, Any] = {}
    for key, template in templates(ehr).items():
        answer = fhir_get(f"{base_url}/{template.replace('{{context.patientId}}', patient)}")
        assert answer.status_code in (200, 404), (key, answer.status_code)
        value = answer.json() if answer.status_code == 200 else None
        empty = (
            value is not None and value.get("resourceType") == "Bundle" and not value.get("entry")
        )
        prefetch[key] = None if empty else value
    return prefetch


def hook_request(patient: str, **fields: Any) -> dict[str, Any]:
    """Shaped like the specification's example request (patient-view)."""
    return {
        "hookInstance": str(uuid.uuid4()),
        "hook": "patient-view",
        "context": {"userId": "Practitioner/example", "patientId": patient, "encounterId": "89284"},
        **fields,
    }


def summaries(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return sorted(card["summary"] for card in answer.json()["cards"])


def served_rulesets() -> dict[str, RuleSet]:
    """What the service serves with these settings: every rule set of the rules folder."""
    settings = get_settings()
    return {
        trial: catalog.load_trial(trial, settings)
        for trial in catalog.available_trials(settings.rules_dir)
    }


def expected_summaries(loaded: LoadedPatients, patient: str) -> list[str]:
    """One card per configured trial the patient is not ineligible for, as an offline
    screening of the same resources says (whatever trials the hospital added)."""
    prefix = patient.rsplit("-", 1)[0] + "-"  # export_patients: <prefix><n>-<original id>
    resources = [r for r in loaded.resources if str(r.get("id", "")).startswith(prefix)]
    today = datetime.now(UTC).date()
    found = []
    for ruleset in served_rulesets().values():
        (verdict,) = evaluate_resources(Evaluator(ruleset), resources, today)
        if verdict.verdict != "ineligible":
            trial = ruleset.trial
            found.append(f"{trial.acronym} ({trial.nct_id}): {verdict.verdict.replace('-', ' ')}")
    return sorted(found)


def no_null_or_empty(value: Any, where: str = "$") -> None:
    """CDS Hooks: JSON elements are never null or empty ("", [], {}) unless stated otherwise."""
    assert value is not None and value not in ("", [], {}), where
    if isinstance(value, dict):
        for key, item in value.items():
            no_null_or_empty(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            no_null_or_empty(item, f"{where}[{index}]")


# --- discovery and prefetch templates ------------------------------------------------------------


def test_templates_are_few_short_plain_searches(
    ehr: Ehr, sekmet: SekmetServer, candidate: str
) -> None:
    discovery = httpx.get(f"{ehr.url}/cds-services", timeout=60).json()
    no_null_or_empty(discovery)
    service = discovery["services"][0]
    assert service["hook"] == "patient-view" and service["id"] == SERVICE
    found = service["prefetch"]
    assert found["patient"] == "Patient/{{context.patientId}}"
    types = {template.split("?")[0] for key, template in found.items() if key != "patient"}
    assert len(found) == len(types) + 1  # one search per resource type, no code lists
    for template in found.values():
        assert "|" not in template and "{{context.patientId}}" in template
        # A default Tomcat accepts an 8 KB request line; these stay far below 1 KB with a
        # 64-character id and a long base URL.
        line = f"GET https://{'x' * 200}/fhir/{template.replace('{{context.patientId}}', 'p' * 64)}"
        assert len(line.encode()) < 1024, template
    # Every template is a search the FHIR server answers.
    prefetch = prefetch_as_an_ehr_would(ehr, sekmet.base_url, candidate)
    assert prefetch["patient"]["id"] == candidate
    assert prefetch["Condition"]["resourceType"] == "Bundle"


# --- the EHR's JWT -------------------------------------------------------------------------------


def test_a_replayed_token_is_refused(ehr: Ehr, sekmet: SekmetServer, candidate: str) -> None:
    body = hook_request(candidate, fhirServer=sekmet.base_url)
    token = ehr.token()
    assert ehr.call(body, token).status_code == 200
    replay = ehr.call(body, token)
    assert replay.status_code == 401 and "jti" in replay.json()["detail"]


def test_iat_kid_and_a_short_life_are_required(
    ehr: Ehr, sekmet: SekmetServer, candidate: str
) -> None:
    body = hook_request(candidate, fhirServer=sekmet.base_url)
    now = int(time.time())
    refused = {
        "no iat": ehr.token(iat=None),
        "no jti": ehr.token(jti=None),
        "no kid": ehr.token(kid=None),
        "unknown kid": ehr.token(kid="k9"),
        "lives 301 s": ehr.token(iat=now - 1, exp=now + 300),
        "issued in the future": ehr.token(iat=now + 120, exp=now + 240),
        "other audience": ehr.token(aud=f"{ehr.url}/cds-services/other"),
    }
    accepted = [reason for reason, bad in refused.items() if ehr.call(body, bad).status_code != 401]
    assert accepted == []
    assert ehr.call(body, ehr.token(iat=now, exp=now + 300)).status_code == 200  # five minutes


def test_a_token_used_on_one_replica_is_refused_by_another(
    ehr: Ehr, sekmet: SekmetServer, helpers: Helpers, database_url: str, candidate: str
) -> None:
    # A second replica: the same configuration and public URL, the same database.
    first_port = int(ehr.url.rsplit(":", 1)[1])
    settings = service_settings(sekmet, helpers, database_url, first_port)
    body = hook_request(candidate, fhirServer=sekmet.base_url)
    token = ehr.token()
    port = free_port()
    with running_service(settings, port) as running:
        other = Ehr(running.url, helpers)
        answered = httpx.post(
            other.endpoint, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=120
        )
        assert answered.status_code == 200
    assert ehr.call(body, token).status_code == 401


# --- fhirServer ----------------------------------------------------------------------------------


class Recorder:
    """An HTTP server that records every request it gets (and answers 404)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.requests.append((self.path, dict(self.headers)))
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.every_trial
def test_fhir_server_must_be_a_configured_one(
    ehr: Ehr, sekmet: SekmetServer, candidate: str
) -> None:
    elsewhere = Recorder()
    try:
        authorization = {
            "access_token": "some-opaque-fhir-access-token",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/Patient.read patient/Observation.read",
            "subject": "cds-service4",
        }
        for server in (elsewhere.url, "http://hooks.smarthealthit.org:9080"):
            body = hook_request(candidate, fhirServer=server, fhirAuthorization=authorization)
            answer = ehr.call(body)
            assert answer.status_code == 403, answer.text
        assert elsewhere.requests == []  # neither a probe nor the EHR's token went there
        # The configured server, spelled differently, is the same server.
        port = sekmet.base_url.split(":")[2].split("/")[0]
        spelled = f"HTTP://127.0.0.1:{port}/fhir/"
        fetched = ehr.call(
            hook_request(candidate, fhirServer=spelled, fhirAuthorization=authorization)
        )
        shipped = [s for s in summaries(fetched) if s.startswith(("RELIEVE", "SSRS"))]
        assert shipped == [
            "RELIEVE (NCT06746103): potential candidate",
            "SSRS (NCT04218617): potential candidate",
        ]
    finally:
        elsewhere.close()


def test_the_patient_id_must_be_a_fhir_id(ehr: Ehr, sekmet: SekmetServer) -> None:
    for patient in ("..", "p/../../metadata", "p?x=1", "p" * 65):
        answer = ehr.call(hook_request(patient, fhirServer=sekmet.base_url))
        assert answer.status_code == 400, patient


def test_a_malformed_request_is_400_and_quotes_nothing(ehr: Ehr, sekmet: SekmetServer) -> None:
    """The specification's examples answer a malformed request with 400 (before: 422)."""
    secret = "Jane-Doe-1960"
    malformed = [
        {k: v for k, v in hook_request(secret).items() if k != "hook"},  # no hook
        {k: v for k, v in hook_request(secret).items() if k != "context"},  # no context
        hook_request(secret, hookInstance=["not", "a", "string"]),
        hook_request(secret, context=secret),  # context not an object
    ]
    for body in malformed:
        answer = ehr.call(body)
        assert answer.status_code == 400, (body, answer.text)
        assert secret not in answer.text
        assert all(error["loc"][0] == "body" for error in answer.json()["detail"])
    not_json = httpx.post(
        ehr.endpoint,
        content=b"{not json " + secret.encode(),
        headers={"Authorization": f"Bearer {ehr.token()}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert not_json.status_code == 400 and secret not in not_json.text


def test_normalised_base_urls() -> None:
    assert normalised_base("HTTPS://Fhir.Example:443/r4/") == "https://fhir.example/r4"
    assert normalised_base("http://fhir.example:80") == "http://fhir.example"
    assert normalised_base("http://fhir.example:8080/r4") == "http://fhir.example:8080/r4"
    for refused in (
        "ftp://fhir.example/r4",
        "http://user:secret@fhir.example/r4",
        "http://fhir.example/r4?x=1",
        "http://fhir.example/r4#x",
        "http://fhir.example/r4/../admin",
        "http://fhir.example/r4%2F..%2Fadmin",
        "http://fhir.example:99999/r4",
        "/r4",
    ):
        assert normalised_base(refused) is None, refused


# --- prefetch semantics --------------------------------------------------------------------------


@pytest.mark.every_trial
def test_null_means_no_data(
    ehr: Ehr, sekmet: SekmetServer, candidate: str, loaded: LoadedPatients
) -> None:
    prefetch = prefetch_as_an_ehr_would(ehr, sekmet.base_url, candidate)
    assert None in prefetch.values()  # the candidate has no ServiceRequest, for one
    # No fhirServer: everything the service needs is in the prefetch, nulls included.
    with_nulls = ehr.call(hook_request(candidate, prefetch=prefetch))
    fetched = ehr.call(hook_request(candidate, fhirServer=sekmet.base_url))
    assert summaries(with_nulls) == summaries(fetched)
    # A card for every trial served that does not exclude the patient, the shipped two among them.
    assert summaries(fetched) == expected_summaries(loaded, candidate)
    assert len([s for s in summaries(fetched) if s.startswith(("RELIEVE", "SSRS"))]) == 2


def test_a_failed_prefetch_is_fetched_or_refused(
    ehr: Ehr, sekmet: SekmetServer, candidate: str
) -> None:
    prefetch = prefetch_as_an_ehr_would(ehr, sekmet.base_url, candidate)
    expected = summaries(ehr.call(hook_request(candidate, fhirServer=sekmet.base_url)))
    failure = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": "timed out"}],
    }
    in_a_bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": failure, "search": {"mode": "outcome"}}],
    }
    for broken in (failure, in_a_bundle):
        body = hook_request(candidate, prefetch={**prefetch, "Condition": broken})
        refused = ehr.call(body)
        assert refused.status_code == 412, refused.text
        assert "Condition" in refused.json()["detail"]
        body["fhirServer"] = sekmet.base_url
        assert summaries(ehr.call(body)) == expected
    # A warning about the search is not a failure.
    warning = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "warning", "code": "informational"}],
    }
    conditions = dict(prefetch["Condition"])
    conditions["entry"] = [
        *conditions["entry"],
        {"resource": warning, "search": {"mode": "outcome"}},
    ]
    body = hook_request(candidate, prefetch={**prefetch, "Condition": conditions})
    assert summaries(ehr.call(body)) == expected
    # A key left out is fetched too, or refused without a server.
    partial = {k: v for k, v in prefetch.items() if k != "Observation"}
    missing = ehr.call(hook_request(candidate, prefetch=partial))
    assert missing.status_code == 412 and "Observation" in missing.json()["detail"]
    fetched = ehr.call(hook_request(candidate, prefetch=partial, fhirServer=sekmet.base_url))
    assert summaries(fetched) == expected


class RecordingProxy:
    """Forwards GETs to a FHIR server and records the paths asked for; refuses POSTs (a
    server without batch), counting them."""

    def __init__(self, target: str) -> None:
        self.paths: list[str] = []
        self.posts = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                proxy.posts += 1
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(405)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                proxy.paths.append(self.path)
                answer = fhir_get(target + self.path.removeprefix("/fhir"), timeout=60)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("content-type", ""))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"

    def types_read(self) -> set[str]:
        return {path.removeprefix("/fhir/").split("?")[0].split("/")[0] for path in self.paths}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_only_what_the_prefetch_lacks_is_read(
    sekmet: SekmetServer, helpers: Helpers, database_url: str, loaded: LoadedPatients
) -> None:
    test_id = "medication-request-by-reference-to-an-rxnorm-medication"
    patient = next(pid for pid, test in loaded.tests.items() if test.id == test_id)
    proxy = RecordingProxy(sekmet.base_url)
    port = free_port()
    allowed = f"{sekmet.base_url},{proxy.url}"
    settings = service_settings(sekmet, helpers, database_url, port, cds_fhir_servers=allowed)
    try:
        with running_service(settings, port) as running:
            ehr = Ehr(running.url, helpers)
            prefetch = prefetch_as_an_ehr_would(ehr, sekmet.base_url, patient)
            fetched = summaries(ehr.call(hook_request(patient, fhirServer=sekmet.base_url)))
            # Complete: only the Medication the MedicationRequest refers to is read (no patient
            # search reaches it).
            complete = ehr.call(hook_request(patient, prefetch=prefetch, fhirServer=proxy.url))
            assert summaries(complete) == fetched
            assert proxy.types_read() == {"Medication"}
            assert all("_id=" in path for path in proxy.paths)
            # One key failed: its type is searched (with the Patient), nothing else; the
            # first time, after reading what the server declares (a batch: refused here).
            proxy.paths.clear()
            failure = {"resourceType": "OperationOutcome", "issue": [{"severity": "fatal"}]}
            broken = {**prefetch, "Condition": failure}
            partial = ehr.call(hook_request(patient, prefetch=broken, fhirServer=proxy.url))
            assert summaries(partial) == fetched
            assert proxy.types_read() == {"metadata", "Condition", "Patient", "Medication"}
            assert proxy.posts == 1  # the batch the CapabilityStatement offers, refused
            proxy.paths.clear()
            again = ehr.call(hook_request(patient, prefetch=broken, fhirServer=proxy.url))
            assert summaries(again) == fetched
            assert proxy.types_read() == {"Condition", "Patient", "Medication"}
            assert proxy.posts == 1  # remembered: plain searches from then on
    finally:
        proxy.close()


def test_reading_the_specification_example_prefetch() -> None:
    example = {
        "patient": {"resourceType": "Patient", "gender": "male", "birthDate": "1974-12-25"},
        "hemoglobin-a1c": {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Observation", "status": "final"}}],
        },
        "user": "123",
    }
    content = read_prefetch(example, ["patient", "hemoglobin-a1c", "diabetes-type2"])
    assert [r["resourceType"] for r in content.resources] == ["Patient", "Observation"]
    assert content.absent == {"diabetes-type2"} and not content.failed
    with pytest.raises(HTTPException) as not_a_resource:
        read_prefetch(example, ["user"])
    assert not_a_resource.value.status_code == 400
    paged = {"resourceType": "Bundle", "link": [{"relation": "next", "url": "http://x/p2"}]}
    assert read_prefetch({"Condition": paged}, ["Condition"]).failed == {"Condition"}


# --- cards ---------------------------------------------------------------------------------------


@pytest.mark.every_trial
def test_cards_follow_the_specification(
    ehr: Ehr, sekmet: SekmetServer, candidate: str, loaded: LoadedPatients
) -> None:
    trial_of = {rs.trial.nct_id: trial for trial, rs in served_rulesets().items()}
    first = ehr.call(hook_request(candidate, fhirServer=sekmet.base_url))
    # Keys the service did not ask for are ignored (the specification's example sends one).
    greeter = {"patientToGreet": {"resourceType": "Patient", "id": candidate}}
    second = ehr.call(hook_request(candidate, prefetch=greeter, fhirServer=sekmet.base_url))
    uuids = []
    for answer in (first, second):
        assert answer.status_code == 200
        no_null_or_empty(answer.json())
        for card in answer.json()["cards"]:
            assert uuid.UUID(card["uuid"]).version == 4 and candidate not in card["uuid"]
            uuids.append(card["uuid"])
            assert len(card["summary"]) < 140 and card["indicator"] in (
                "info",
                "warning",
                "critical",
            )
            topic = card["source"]["topic"]
            assert topic["system"] == "https://clinicaltrials.gov/nctid"
            assert topic["code"] in card["summary"] and topic["display"]
            assert card["source"]["label"] == "prescreen"
            # The card opens the web worklist's page for this patient and trial.
            (link,) = card["links"]
            trial = trial_of[topic["code"]]
            assert link["type"] == "absolute" and link["label"]
            assert link["url"] == (f"{ehr.url}/ui/patients/{candidate}?trial={trial}")
    cards = len(expected_summaries(loaded, candidate))
    assert cards >= 2 and len(uuids) == 2 * cards == len(set(uuids))  # new per card and call


# --- feedback ------------------------------------------------------------------------------------


def test_feedback_is_recorded(
    ehr: Ehr, sekmet: SekmetServer, candidate: str, database_url: str
) -> None:
    cards = ehr.call(hook_request(candidate, fhirServer=sekmet.base_url)).json()["cards"]
    relieve = next(c["uuid"] for c in cards if c["summary"].startswith("RELIEVE"))
    ssrs = next(c["uuid"] for c in cards if c["summary"].startswith("SSRS"))
    accepted = {
        "feedback": [
            {
                "card": relieve,
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
                "outcomeTimestamp": "2020-12-11T00:00:00Z",
            }
        ]
    }
    overridden = {
        "feedback": [
            {"card": ssrs, "outcome": "overridden", "outcomeTimestamp": "2020-12-11T00:00:00Z"}
        ]
    }
    with_reason = {
        "feedback": [
            {
                "card": ssrs,
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {
                        "code": "d7ecf885",
                        "system": "https://example.com/cds-hooks/override-reason-system",
                    },
                    "userComment": "A comment entered by the clinician.",
                },
                "outcomeTimestamp": "2020-12-11T00:05:00Z",
            }
        ]
    }
    for body in (accepted, overridden, with_reason, with_reason):  # the last one sent twice
        answer = ehr.feedback(body)
        assert answer.status_code == 200, answer.text
    store = Store(database_url)
    try:
        rows = CdsStore(store).feedback()
        assert [(r.trial, r.patient_id, r.outcome) for r in rows] == [
            ("relieve", candidate, "accepted"),
            ("ssrs", candidate, "overridden"),
            ("ssrs", candidate, "overridden"),
        ]
        assert rows[0].accepted_suggestions == ["e56e1945-20b3-4393-8503-a1a20fd73152"]
        assert rows[1].override_reason is None
        assert rows[2].override_reason == with_reason["feedback"][0]["overrideReason"]
        assert rows[2].outcome_at.isoformat() == "2020-12-11T00:05:00"
        # A card this service never returned, and a malformed report: nothing stored.
        unknown = {"feedback": [{**overridden["feedback"][0], "card": str(uuid.uuid4())}]}
        assert ehr.feedback(unknown).status_code == 400
        ignored = {"feedback": [{**overridden["feedback"][0], "outcome": "ignored"}]}
        assert ehr.feedback(ignored).status_code == 400  # malformed: 400, as the spec's examples
        assert len(CdsStore(store).feedback()) == 3
    finally:
        store.close()
    # Feedback carries the EHR's JWT like every CDS Hooks call.
    no_token = httpx.post(f"{ehr.endpoint}/feedback", json=accepted, timeout=60)
    assert no_token.status_code == 401
    assert ehr.feedback(accepted, ehr.token(aud=f"{ehr.url}/elsewhere")).status_code == 401


# --- CORS ----------------------------------------------------------------------------------------


def test_cors_for_browser_based_ehrs(ehr: Ehr) -> None:
    preflight = {
        "Origin": "https://ehr.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    allowed = httpx.options(ehr.endpoint, headers=preflight, timeout=60)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://ehr.example"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "POST" in allowed.headers["access-control-allow-methods"]
    other = httpx.options(ehr.endpoint, headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    # The answer itself, errors included, is readable by the EHR's page.
    refused = httpx.post(ehr.endpoint, json={}, headers={"Origin": "https://ehr.example"})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "https://ehr.example"
    discovery = httpx.get(f"{ehr.url}/cds-services", headers={"Origin": "https://ehr.example"})
    assert discovery.headers["access-control-allow-origin"] == "https://ehr.example"
    # The rest of the API is not opened to other origins.
    health = httpx.get(f"{ehr.url}/healthz", headers={"Origin": "https://ehr.example"})
    assert "access-control-allow-origin" not in health.headers
    # Every CDS Hooks path answers a preflight, feedback and discovery included.
    for path in ("/cds-services", f"/cds-services/{SERVICE}/feedback"):
        answer = httpx.options(f"{ehr.url}{path}", headers=preflight, timeout=60)
        assert answer.status_code == 200, path
        assert answer.headers["access-control-allow-origin"] == "https://ehr.example"


def test_a_preflight_is_answered_without_origins_configured_and_star_is_refused(
    sekmet: SekmetServer, helpers: Helpers, database_url: str
) -> None:
    """Before: with no origin configured, a preflight went to the routes (405)."""
    port = free_port()
    with running_service(service_settings(sekmet, helpers, database_url, port), port) as running:
        preflight = {"Origin": "https://ehr.example", "Access-Control-Request-Method": "POST"}
        answer = httpx.options(f"{running.url}/cds-services/{SERVICE}", headers=preflight)
        assert answer.status_code == 400
        assert "access-control-allow-origin" not in answer.headers
    with pytest.raises(PrescreenError, match="not accepted"):
        create_app(service_settings(sekmet, helpers, database_url, port, cors_origins="*"))


def test_a_search_the_server_refuses_leaves_its_criteria_unknown(
    sekmet: SekmetServer, helpers: Helpers, database_url: str, loaded: LoadedPatients
) -> None:
    """A fhirServer that refuses ServiceRequest searches: the card is still given, and the
    treatment the refused search would have shown is to check, never a reason to exclude."""
    candidate = next(pid for pid, test in loaded.tests.items() if test.id == "candidate")
    proxy = RefusingProxy(sekmet.base_url, refuse={"ServiceRequest"})
    port = free_port()
    allowed = f"{sekmet.base_url},{proxy.url}"
    settings = service_settings(sekmet, helpers, database_url, port, cds_fhir_servers=allowed)
    try:
        with running_service(settings, port) as running:
            ehr = Ehr(running.url, helpers)
            complete = ehr.call(hook_request(candidate, fhirServer=sekmet.base_url))
            answer = ehr.call(hook_request(candidate, fhirServer=proxy.url))
    finally:
        proxy.close()

    def relieve_detail(response: httpx.Response) -> str:
        summaries(response)  # a 200 with cards
        [card] = [c for c in response.json()["cards"] if c["summary"].startswith("RELIEVE")]
        return str(card["detail"])

    # Today's date is the reference of a hook: the windows may leave other criteria to check;
    # the treatment (a ServiceRequest) is met when the server gives it, to check when it
    # refuses it, never a reason to drop the card.
    assert "**treatment**" not in relieve_detail(complete)
    detail = relieve_detail(answer)
    assert "**treatment**" in detail and "ServiceRequest records are not available" in detail
    assert any("ServiceRequest" in path for path in proxy.refused)


def test_expired_tokens_are_deleted_at_most_once_a_minute(database_url: str) -> None:
    """A call inserts its jti and nothing else, but once a minute the expired rows go."""
    from datetime import timedelta

    from sqlalchemy import select

    from service.state.cds_hooks import PRUNE_EVERY_SECONDS
    from service.state.models import CdsTokenUse
    from service.state.store import migrate, now

    migrate(database_url)
    store = Store(database_url)
    moment = [1000.0]
    cds = CdsStore(store, clock=lambda: moment[0])

    def expired(key: str) -> None:
        with store.session() as session:
            session.add(CdsTokenUse(key=key, expires_at=now() - timedelta(minutes=1)))

    def keys() -> set[str]:
        with store.session() as session:
            return set(session.scalars(select(CdsTokenUse.key)))

    try:
        later = now() + timedelta(minutes=5)
        expired("expired-1")
        assert cds.first_use("https://ehr.example", "a", later)
        assert "expired-1" not in keys()  # the first call prunes
        expired("expired-2")
        moment[0] += PRUNE_EVERY_SECONDS / 2
        assert cds.first_use("https://ehr.example", "b", later)
        assert "expired-2" in keys()  # not within the minute
        moment[0] += PRUNE_EVERY_SECONDS
        assert cds.first_use("https://ehr.example", "c", later)
        assert "expired-2" not in keys()
        assert not cds.first_use("https://ehr.example", "b", later)  # still a replay
        assert len(keys()) == 3
    finally:
        store.close()


def test_a_sqlite_state_keeps_a_write_ahead_log(tmp_path: Any) -> None:
    """Commits append to a log instead of rewriting a journal: what each CDS Hooks call pays
    twice while a clinician waits."""
    from sqlalchemy import text

    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        with store.engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        store.close()
