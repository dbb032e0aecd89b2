"""Servers nobody here wrote: what the SMART reference Bulk Data server (and others) did to
prescreen, reproduced with a small real HTTP server on 127.0.0.1 (tests/fakebulk.py)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from service.cli import main
from service.errors import PrescreenError
from service.fhir.auth import scope_reads
from service.fhir.bulk.export import ExportOptions, export_to_folder
from service.fhir.bulk.job import ExportState
from service.fhir.bulk.kickoff import BodyLimits, BulkClient, PollPolicy, TooLargeError
from service.fhir.bulk.plan import ExportRequest
from service.fhir.client import FhirClient, RetryPolicy
from service.fhir.connect import (
    DRY_RUN_PERMISSIONS,
    WRITE_PERMISSIONS,
    ServerAbilities,
    default_scope,
)
from service.fhir.retrieval import Fetched, PatientFetcher
from service.ruleset.evaluate import Evaluator
from service.ruleset.loader import RuleSet
from service.screening.inmemory import evaluate_resources
from service.screening.live import LiveOptions, Selection, writes_of
from service.screening.source import SourceNotes
from service.settings import get_settings
from tests.conftest import SAMPLE_DIR
from tests.fakebulk import FakeBulkServer, Reply, outcome, serving
from tests.helpers import read_ndjson
from tests.integration.servers import free_port

ONLY_BY_REQUEST = "p0000083"  # a candidate whose only treatment record is a ServiceRequest
LACKING = ("MedicationAdministration", "MedicationRequest", "MedicationStatement", "ServiceRequest")


def sample_data(without: tuple[str, ...] = LACKING) -> dict[str, list[bytes]]:
    """The sample hospital as a server's data: every type the trials read (the sample has no
    medication records), less ``without``."""
    found: dict[str, list[bytes]] = {rtype: [] for rtype in LACKING}
    found.update(
        {path.stem: path.read_bytes().splitlines() for path in SAMPLE_DIR.glob("*.ndjson")}
    )
    return {rtype: lines for rtype, lines in sorted(found.items()) if rtype not in without}


def screen_bulk(server: FakeBulkServer, out: Path, *extra: str) -> int:
    command = ["screen", "--trial", "relieve", "--fhir-url", server.base_url, "--bulk"]
    return main([*command, "--as-of", "2026-06-15", "--out", str(out), "--no-progress", *extra])


def verdicts_of(out: Path) -> dict[str, dict[str, Any]]:
    return {v["patient"].removeprefix("Patient/"): v for v in read_ndjson(out / "verdicts.ndjson")}


@pytest.fixture
def fast_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Short waits: the fake server answers at once, a test never waits for real."""
    monkeypatch.setenv("PRESCREEN_BULK_POLL_SECONDS", "0.01")
    monkeypatch.setenv("PRESCREEN_BULK_POLL_MIN_SECONDS", "0.01")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_a_server_lacking_types_gives_every_patient_a_verdict_never_by_their_absence(
    tmp_path: Path, fast_settings: None
) -> None:
    """The must-show check: a server whose CapabilityStatement lacks ServiceRequest and the
    medication types, and that refuses a kick-off naming them with 400 (one at a time)."""
    complete = tmp_path / "complete"
    with serving(FakeBulkServer(sample_data(without=()))) as server:
        assert screen_bulk(server, complete) == 0
    baseline = verdicts_of(complete)

    out = tmp_path / "out"
    server = FakeBulkServer(sample_data(), port=free_port())
    with serving(server):
        code = screen_bulk(server, out)
        asked = [params.get("_type", [""])[0].split(",") for _, params in server.kickoffs]
    assert code == 1  # finished, with doubtful input
    # Refused type by type, then exported without them.
    assert len(server.kickoffs) == 1 + len(LACKING)
    assert not set(LACKING) & set(asked[-1]) and "Condition" in asked[-1]

    verdicts = verdicts_of(out)
    assert set(verdicts) == set(baseline)  # every patient a verdict
    patient = verdicts[ONLY_BY_REQUEST]
    assert baseline[ONLY_BY_REQUEST]["verdict"] == "candidate"
    assert patient["verdict"] == "potential-candidate"
    treatment = patient["criteria"]["treatment"]
    assert treatment["result"] == "unknown"
    assert "ServiceRequest" in treatment["reason"]
    # Nobody is excluded by what the server lacks.
    newly_ineligible = {
        pid
        for pid, v in verdicts.items()
        if v["verdict"] == "ineligible" and baseline[pid]["verdict"] != "ineligible"
    }
    assert newly_ineligible == set()

    issues = [i for i in read_ndjson(out / "issues.ndjson") if i["kind"] == "source-unavailable"]
    assert [i["message"].split(" ")[0] for i in issues] == list(LACKING)
    summary = json.loads((out / "summary.json").read_text())
    assert [e["type"] for e in summary["sources_unavailable"]] == list(LACKING)
    assert summary["sources_unavailable"][-1]["criteria"] == [
        "treatment",
        "augmentation-only",
        "systemic-only",
    ]

    # An incremental export deletes the patient's metastasis: now ineligible.
    server.deleted = [f"Condition/{ONLY_BY_REQUEST}-c2"]
    with serving(server):
        assert screen_bulk(server, out, "--since", "2026-06-14T00:00:00Z") == 1
    patient = verdicts_of(out)[ONLY_BY_REQUEST]
    assert patient["verdict"] == "ineligible"
    assert patient["criteria"]["spinal-metastasis"]["result"] == "not_met"
    conditions = (out / "bulk" / "Condition.1.ndjson").read_text()
    assert f'"{ONLY_BY_REQUEST}-c2"' not in conditions and f'"{ONLY_BY_REQUEST}-c1"' in conditions
    assert len(verdicts_of(out)) == len(baseline)


def test_a_deleted_patient_is_not_screened(tmp_path: Path, fast_settings: None) -> None:
    out = tmp_path / "out"
    server = FakeBulkServer(sample_data(without=()), port=free_port())
    with serving(server):
        assert screen_bulk(server, out) == 0
    server.deleted = ["Patient/p0000083"]
    with serving(server):
        assert screen_bulk(server, out, "--since", "2026-06-14T00:00:00Z") == 0
    assert "p0000083" not in verdicts_of(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["not_screened"] == [
        {
            "patient": "Patient/p0000083",
            "reason": "the patient record was deleted on the server (an incremental export "
            "lists it)",
        }
    ]
    assert summary["records_without_patient"] == {}


def test_a_resource_listed_both_changed_and_deleted_is_gone(
    tmp_path: Path, fast_settings: None
) -> None:
    """The SMART reference server lists resources of an incremental export's output as
    deleted too: the IG's deleted are resources that would have been returned but are gone."""
    out = tmp_path / "out"
    server = FakeBulkServer(sample_data(without=()), port=free_port())
    with serving(server):
        assert screen_bulk(server, out) == 0
    metastasis = f'"{ONLY_BY_REQUEST}-c2"'.encode()
    [line] = [line for line in server.data["Condition"] if metastasis in line]
    server.changes = {"Condition": [line]}
    server.deleted = [f"Condition/{ONLY_BY_REQUEST}-c2"]
    with serving(server):
        assert screen_bulk(server, out, "--since", "2026-06-14T00:00:00Z") == 0
    for path in (out / "bulk").glob("Condition.*.ndjson"):
        assert metastasis not in path.read_bytes(), path.name
    assert verdicts_of(out)[ONLY_BY_REQUEST]["verdict"] == "ineligible"


def test_a_referenced_type_the_server_cannot_search_leaves_its_records_undecided(
    tmp_path: Path, fast_settings: None
) -> None:
    """A MedicationRequest names a Medication outside the Patient compartment; the server has
    no search to read it by id (as the SMART reference server): Medication is lost, and the
    record naming it never decides by its absence."""
    order = {
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{ONLY_BY_REQUEST}"},
        "authoredOn": "2026-06-01",
        "medicationReference": {"reference": "Medication/m1"},
    }
    data = sample_data(without=())
    data["MedicationRequest"] = [json.dumps(order).encode()]
    out = tmp_path / "out"
    with serving(FakeBulkServer(data)) as server:
        assert screen_bulk(server, out) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [e["type"] for e in summary["sources_unavailable"]] == ["Medication"]
    patient = verdicts_of(out)[ONLY_BY_REQUEST]
    assert patient["verdict"] == "potential-candidate"
    systemic = patient["criteria"]["systemic-only"]
    assert systemic["result"] == "unknown"
    assert "a MedicationRequest record could not be read" in systemic["reason"]


def test_a_server_refusing_the_kick_off_by_get_gets_a_post(
    tmp_path: Path, fast_settings: None
) -> None:
    server = FakeBulkServer(sample_data(), get_allowed=False)
    with serving(server):
        command = ["export", "--trial", "relieve", "--fhir-url", server.base_url]
        code = main([*command, "--out", str(tmp_path), "--no-progress"])
    assert code == 1  # types lost
    methods = [method for method, _ in server.kickoffs]
    assert methods[0] == "GET" and set(methods[1:]) == {"POST"}
    _method, params = server.kickoffs[-1]
    assert params["_outputFormat"] == ["application/fhir+ndjson"]
    assert "Condition" in params["_type"] and "ServiceRequest" not in params["_type"]
    state = json.loads((tmp_path / "export.json").read_text())
    assert state["jobs"][0]["method"] == "POST"
    assert (tmp_path / "Condition.1.ndjson").is_file()


def test_a_malformed_manifest_entry_makes_its_type_a_lost_source(
    tmp_path: Path, fast_settings: None
) -> None:
    server = FakeBulkServer(
        sample_data(),
        extra_outputs=[{"type": "Procedure", "url": 42}],
    )
    out = tmp_path / "out"
    with serving(server):
        assert screen_bulk(server, out) == 1
    summary = json.loads((out / "summary.json").read_text())
    procedure = next(e for e in summary["sources_unavailable"] if e["type"] == "Procedure")
    assert "without a usable URL" in procedure["reason"]
    state = json.loads((out / "bulk" / "export.json").read_text())
    assert state["jobs"][0]["lost"]["Procedure"] == procedure["reason"]
    # The other files of the type are read: present records still decide.
    assert (out / "bulk" / "Procedure.1.ndjson").is_file()


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def export(
    server: FakeBulkServer,
    folder: Path,
    sleeps: Sleeps,
    *,
    poll: PollPolicy | None = None,
    limits: BodyLimits | None = None,
) -> Any:
    async def go() -> Any:
        client = FhirClient(server.base_url, retry=RetryPolicy(attempts=3), sleep=sleeps)
        async with (
            client,
            BulkClient(client, poll=poll or PollPolicy(), limits=limits, sleep=sleeps) as bulk,
        ):
            request = ExportRequest("patient", types=("Condition", "Patient"))
            return await export_to_folder(
                bulk, folder, request, options=ExportOptions(concurrency=2)
            )

    return asyncio.run(go())


def test_retry_after_zero_or_in_the_past_waits_the_minimum_interval(tmp_path: Path) -> None:
    past = email.utils.formatdate(time.time() - 3600, usegmt=True)
    replies = [Reply(202, {"Retry-After": "0"})] * 3 + [Reply(202, {"Retry-After": past})] * 3
    server = FakeBulkServer(sample_data(), status_replies=list(replies))
    sleeps = Sleeps()
    with serving(server):
        export(server, tmp_path, sleeps, poll=PollPolicy(min_interval=1.5))
    assert server.polls == 7
    assert sleeps.calls == [1.5] * 6


def test_a_status_answer_past_its_bound_stops_the_run_and_keeps_the_job(tmp_path: Path) -> None:
    big = Reply(202, {"Retry-After": "1"}, b"x" * 5000)
    server = FakeBulkServer(sample_data(), status_replies=[big])
    with serving(server):
        with pytest.raises(TooLargeError, match="BULK_MAX_STATUS_BYTES"):
            export(server, tmp_path, Sleeps(), limits=BodyLimits(status=4096))
        # The job is kept: the same command resumes it (here, with the manifest).
        state = ExportState.load(tmp_path, f"{server.base_url}/")
        assert state.current is not None and state.current.status_url is not None
        report = export(server, tmp_path, Sleeps())
    assert report.resumed and report.files == len(["Condition", "Patient"])


def test_a_manifest_past_its_bound_is_refused(tmp_path: Path) -> None:
    server = FakeBulkServer(sample_data())
    with serving(server), pytest.raises(TooLargeError, match="BULK_MAX_MANIFEST_BYTES"):
        export(server, tmp_path, Sleeps(), limits=BodyLimits(manifest=100))


def test_a_file_past_its_bound_is_refused_and_nothing_half_written_stays(
    tmp_path: Path,
) -> None:
    server = FakeBulkServer(sample_data())
    condition_bytes = len(b"\n".join(server.data["Condition"]))
    with serving(server), pytest.raises(TooLargeError, match="BULK_MAX_FILE_BYTES"):
        export(server, tmp_path, Sleeps(), limits=BodyLimits(file=condition_bytes // 2))
    assert not list(tmp_path.glob("Condition.*"))
    state = ExportState.load(tmp_path, f"{server.base_url}/")
    assert state.current is not None
    assert not any(f.done for f in state.current.files if f.type == "Condition")


def test_the_cli_reports_a_bound_as_a_clear_error(
    tmp_path: Path, fast_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRESCREEN_BULK_MAX_FILE_BYTES", "1000")
    get_settings.cache_clear()
    with serving(FakeBulkServer(sample_data(without=()))) as server:
        assert screen_bulk(server, tmp_path / "out") == 2
    assert not (tmp_path / "out" / "verdicts.ndjson").exists()


def test_an_unreadable_deletion_list_stops_the_screening(
    tmp_path: Path, fast_settings: None
) -> None:
    out = tmp_path / "out"
    server = FakeBulkServer(sample_data(without=()), port=free_port())
    with serving(server):
        assert screen_bulk(server, out) == 0
    server.deleted = ["Condition/../x"]
    with serving(server):
        assert screen_bulk(server, out, "--since", "2026-06-14T00:00:00Z") == 2


def test_unknown_options_of_the_fake_server_are_refused() -> None:
    """The fake server refuses what real ones refuse (a guard on the tests above)."""
    with pytest.raises(PrescreenError):
        ExportRequest("patient", since="yesterday")


# --- scopes -------------------------------------------------------------------------------------


def test_scopes_follow_what_a_run_does() -> None:
    reads = ["Condition", "ServiceRequest"]
    assert default_scope(reads).split() == [
        "system/Condition.rs",
        "system/Patient.rs",
        "system/ServiceRequest.rs",
    ]
    written = default_scope(reads, writes=WRITE_PERMISSIONS).split()
    assert "system/ResearchSubject.crus" in written and "system/Provenance.c" in written
    assert "system/Condition.rs" in written
    assert default_scope(reads, v2=False, writes={"Subscription": "cu"}).split() == [
        "system/Condition.read",
        "system/Patient.read",
        "system/ServiceRequest.read",
        "system/Subscription.write",
    ]
    options = LiveOptions(as_of=date(2026, 6, 15), out=Path("out"), selection=Selection("cohort"))
    assert writes_of(options) == {}
    assert writes_of(replace(options, write_back=True)) == WRITE_PERMISSIONS
    assert writes_of(replace(options, write_back=True, dry_run=True)) == DRY_RUN_PERMISSIONS


@pytest.mark.parametrize(
    ("granted", "covered"),
    [
        ("system/*.read", True),
        ("system/Condition.rs", True),
        ("system/Condition.r", True),
        ("system/Condition.cud", False),
        ("system/Condition.rs?category=x", False),
        ("patient/Condition.read", False),
        ("system/Observation.rs", False),
    ],
)
def test_which_granted_scopes_let_a_run_read_a_type(granted: str, covered: bool) -> None:
    assert scope_reads(granted, "Condition") is covered


SMART_BASE = "https://ehr.example/fhir"
TOKEN = "https://ehr.example/auth/token"


@pytest.fixture
def smart_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for name, value in {
        "FHIR_AUTH": "smart",
        "SMART_CLIENT_ID": "prescreen",
        "SMART_PRIVATE_KEY": str(pem),
        "SMART_KID": "k1",
        "BULK_POLL_MIN_SECONDS": "0.01",
    }.items():
        monkeypatch.setenv(f"PRESCREEN_{name}", value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@respx.mock
@pytest.mark.parametrize("server", ["grants fewer", "refuses a scope"])
def test_an_export_asks_read_scopes_only_and_a_type_not_granted_is_lost(
    tmp_path: Path, smart_settings: None, server: str
) -> None:
    respx.get(f"{SMART_BASE}/.well-known/smart-configuration").mock(
        return_value=httpx.Response(
            200, json={"token_endpoint": TOKEN, "capabilities": ["permission-v2"]}
        )
    )
    asked: list[str] = []

    def grant(request: httpx.Request) -> httpx.Response:
        scope = parse_qs(request.content.decode())["scope"][0]
        asked.append(scope)
        if server == "refuses a scope" and "ServiceRequest" in scope:
            # The SMART reference server's answer for a type it does not have.
            description = (
                'Resources of type "ServiceRequest" do not exist on this server (requested by '
                'scope "system/ServiceRequest.rs")'
            )
            error = {"error": "invalid_scope", "error_description": description}
            return httpx.Response(400, json=error)
        granted = " ".join(s for s in scope.split() if "ServiceRequest" not in s)
        return httpx.Response(200, json={"access_token": "t", "expires_in": 300, "scope": granted})

    respx.post(TOKEN).mock(side_effect=grant)
    respx.get(f"{SMART_BASE}/metadata").mock(
        return_value=httpx.Response(200, json={"resourceType": "CapabilityStatement"})
    )
    kickoff = respx.get(f"{SMART_BASE}/Patient/$export").mock(
        return_value=httpx.Response(202, headers={"Content-Location": f"{SMART_BASE}/status"})
    )
    respx.get(f"{SMART_BASE}/status").mock(
        return_value=httpx.Response(
            200,
            json={
                "transactionTime": "2026-06-15T00:00:00Z",
                "requiresAccessToken": True,
                "output": [{"type": "Patient", "url": f"{SMART_BASE}/files/p"}],
            },
        )
    )
    respx.get(f"{SMART_BASE}/files/p").mock(
        return_value=httpx.Response(200, content=b'{"resourceType":"Patient","id":"p"}\n')
    )
    respx.delete(f"{SMART_BASE}/status").mock(return_value=httpx.Response(202))
    command = ["export", "--trial", "relieve", "--fhir-url", SMART_BASE, "--out", str(tmp_path)]
    assert main([*command, "--no-progress"]) == 1  # a type lost
    scope = asked[0]
    assert all(s.endswith(".rs") for s in scope.split())  # read-only: no write scope asked
    assert "system/ServiceRequest.rs" in scope
    if server == "refuses a scope":  # asked again without what the refusal named
        assert asked[1:] == [" ".join(s for s in scope.split() if "ServiceRequest" not in s)]
    else:
        assert len(asked) == 1
    types = parse_qs(urlsplit(str(kickoff.calls.last.request.url)).query)["_type"][0]
    assert "ServiceRequest" not in types.split(",") and "Condition" in types.split(",")
    state = json.loads((tmp_path / "export.json").read_text())
    assert state["jobs"][0]["lost"] == {
        "ServiceRequest": "the server did not grant a scope to read them"
    }


# --- REST searches ------------------------------------------------------------------------------


def _bundle(*resources: dict[str, Any], outcome_error: bool = False) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [
        {"resource": r, "search": {"mode": "match"}} for r in resources
    ]
    if outcome_error:
        issue = {"severity": "error", "code": "not-supported", "diagnostics": "no such search"}
        entries.append(
            {
                "resource": {"resourceType": "OperationOutcome", "issue": [issue]},
                "search": {"mode": "outcome"},
            }
        )
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


PATIENT = {"resourceType": "Patient", "id": "p", "birthDate": "1960-01-01"}
NRS = {
    "resourceType": "Observation",
    "id": "nrs",
    "status": "final",
    "subject": {"reference": "Patient/p"},
    "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
    "effectiveDateTime": "2026-06-10",
    "valueInteger": 7,
}


BATCH_FOUND: dict[str, list[dict[str, Any]]] = {"Patient": [PATIENT], "Observation": [NRS]}


def _rest_routes(refused_filter_calls: list[str]) -> None:
    respx.get(f"{SMART_BASE}/Patient").mock(return_value=httpx.Response(200, json=_bundle(PATIENT)))
    respx.get(f"{SMART_BASE}/Condition").mock(return_value=httpx.Response(200, json=_bundle()))
    respx.get(f"{SMART_BASE}/ServiceRequest").mock(
        return_value=httpx.Response(400, json=outcome("Unknown resource type 'ServiceRequest'"))
    )
    respx.get(f"{SMART_BASE}/Procedure").mock(
        return_value=httpx.Response(200, json=_bundle(outcome_error=True))
    )

    def observations(request: httpx.Request) -> httpx.Response:
        if "code" in request.url.params:  # a filter this server does not take
            refused_filter_calls.append(str(request.url))
            return httpx.Response(400, json=outcome("Unknown search parameter 'code'"))
        return httpx.Response(200, json=_bundle(NRS))

    respx.get(f"{SMART_BASE}/Observation").mock(side_effect=observations)
    for rtype in ("MedicationRequest", "MedicationAdministration", "MedicationStatement"):
        respx.get(f"{SMART_BASE}/{rtype}").mock(return_value=httpx.Response(200, json=_bundle()))


@respx.mock
@pytest.mark.parametrize("batch", [False, True])
def test_a_refused_search_makes_its_type_lost_and_a_refused_filter_is_left_out(
    relieve: RuleSet, batch: bool
) -> None:
    refused_filters: list[str] = []
    _rest_routes(refused_filters)
    if batch:
        # The batch runs every search but ServiceRequest's (its entry says 400).
        def batch_answer(request: httpx.Request) -> httpx.Response:
            entries = json.loads(request.content)["entry"]
            answers = []
            for entry in entries:
                rtype = entry["request"]["url"].split("?")[0]
                if rtype == "ServiceRequest":
                    answers.append({"response": {"status": "400 Bad Request"}})
                else:
                    found = BATCH_FOUND.get(rtype, [])
                    refused = rtype == "Procedure"
                    answer = _bundle(*found, outcome_error=refused)
                    answers.append({"response": {"status": "200"}, "resource": answer})
            return httpx.Response(200, json={"resourceType": "Bundle", "entry": answers})

        respx.post(f"{SMART_BASE}/").mock(side_effect=batch_answer)
    abilities = ServerAbilities("4.0.1", batch=batch, transaction=False)

    async def go() -> tuple[Fetched, Fetched, int]:
        async with FhirClient(SMART_BASE, retry=RetryPolicy(attempts=2)) as client:
            fetcher = PatientFetcher(
                client, relieve.mapper, abilities, codes_per_request=40, page_size=50
            )
            first = await fetcher.fetch(["p"])
            calls = respx.calls.call_count
            second = await fetcher.fetch(["p"])
            asked_again = sum(
                "ServiceRequest" in str(c.request.url) for c in list(respx.calls)[calls:]
            )
            return first, second, asked_again

    first, second, asked_again = asyncio.run(go())
    assert first.lost == {
        "ServiceRequest": "the server refused its search (HTTP 400)",
        "Procedure": "the server refused its search (an OperationOutcome error)",
    }
    assert second.lost == first.lost and asked_again == 0  # not asked again
    if not batch:
        assert refused_filters  # the code filter was refused: asked again without it
    assert {r["id"] for r in first.resources} == {"p", "nrs"}
    verdicts = evaluate_resources(
        Evaluator(relieve), first.resources, date(2026, 6, 15), notes=SourceNotes(first.lost)
    )
    [verdict] = verdicts
    results = {c.id: c for c in verdict.criteria}
    assert results["treatment"].result == "unknown"
    assert results["augmentation-only"].result == "unknown"
    assert "Procedure and ServiceRequest records are not available" in results["treatment"].reason
    assert results["pain-nrs"].result == "met"  # read unfiltered, filtered here
