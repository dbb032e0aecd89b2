"""Bulk Data export faults a real server cannot produce on demand, simulated with respx.

Waits go through an injected sleep that records them: no test sleeps for real.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx

from service import catalog
from service.cli import main
from service.errors import FhirUnavailableError, PrescreenError
from service.fhir.auth import BearerAuth, SmartBackendAuth
from service.fhir.bulk.export import ExportOptions, export_to_folder, finish_export
from service.fhir.bulk.kickoff import BulkClient, BulkExportError, ExportGoneError, PollPolicy
from service.fhir.bulk.plan import (
    ExportRequest,
    plan_export,
    type_filter_support,
)
from service.fhir.client import FhirClient, RetryPolicy
from service.settings import get_settings
from tests.helpers import read_ndjson

BASE = "https://ehr.example/fhir"
EXPORT_TYPES = (
    "Condition",
    "MedicationAdministration",
    "MedicationRequest",
    "MedicationStatement",
    "Observation",
    "Patient",
    "Procedure",
    "ServiceRequest",
)
STATUS = f"{BASE}/bulk-status/job-1"
TOKEN = "https://auth.example/token"
REQUEST = ExportRequest("patient", types=("Condition", "Patient"))
PATIENT = b'{"resourceType":"Patient","id":"p1","birthDate":"1950-01-01"}\n'
CONDITION = (
    b'{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"},'
    b'"code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"C79.51"}]}}\n'
)


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class Notes:
    """An ExportProgress that records what it is told."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.done: list[int] = []

    def task(self, description: str, total: int, unit: str = "") -> Any:
        return self.done.append

    def status(self, description: str) -> Any:
        return self.lines.append


class CutStream(httpx.AsyncByteStream):
    """A body that delivers its first bytes, then loses the connection."""

    def __init__(self, data: bytes, cut_at: int) -> None:
        self.data, self.cut_at = data, cut_at

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data[: self.cut_at]
        raise httpx.ReadError("connection lost")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def manifest(*outputs: tuple[str, str], errors: tuple[str, ...] = (), token: bool = False) -> Any:
    return {
        "transactionTime": "2026-06-15T00:00:00Z",
        "request": f"{BASE}/Patient/$export",
        "requiresAccessToken": token,
        "output": [{"type": t, "url": u} for t, u in outputs],
        "error": [{"type": "OperationOutcome", "url": u} for u in errors],
    }


def kick_off(status: str = STATUS) -> respx.Route:
    return respx.get(path__regex=r"/fhir/(Patient/|Group/[^/]+/)?\$export$").mock(
        return_value=httpx.Response(202, headers={"Content-Location": status})
    )


async def export(
    folder: Path,
    sleeps: Sleeps,
    *,
    attempts: int = 4,
    auth: httpx.Auth | None = None,
    request: ExportRequest = REQUEST,
    progress: Notes | None = None,
    poll: PollPolicy | None = None,
    delete: bool = False,
) -> Any:
    client = FhirClient(
        BASE, auth=auth, retry=RetryPolicy(attempts=attempts, base_delay=0.1), sleep=sleeps
    )
    async with client, BulkClient(client, poll=poll or PollPolicy(), sleep=sleeps) as bulk:
        report = await export_to_folder(
            bulk, folder, request, options=ExportOptions(concurrency=2), progress=progress
        )
        if delete:
            await finish_export(bulk, folder, keep=False)
        return report


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


# --- kick-off and polling ---------------------------------------------------------------------


@respx.mock
def test_kick_off_asks_for_ndjson_asynchronously_for_the_types_the_mapping_reads(
    tmp_path: Path, sleeps: Sleeps
) -> None:
    mapper = catalog.load_trial("relieve", get_settings()).mapper
    request = plan_export(
        [mapper], level="patient", group_id=None, since=None, filter_types=True, max_tokens=80
    )
    route = kick_off()
    respx.get(STATUS).mock(return_value=httpx.Response(200, json=manifest()))
    run(export(tmp_path, sleeps, request=request))

    sent = route.calls.last.request
    assert sent.headers["Prefer"] == "respond-async"
    assert sent.headers["Accept"] == "application/fhir+json"
    query = parse_qs(urlsplit(str(sent.url)).query)
    assert query["_outputFormat"] == ["application/fhir+ndjson"]
    types = query["_type"][0].split(",")
    assert "Patient" in types and "Condition" in types and "MedicationRequest" in types
    assert "Medication" not in types  # outside the Patient compartment: read by id instead
    filters = {f.split("?", 1)[0]: f for f in query["_typeFilter"]}
    # One filter per type; a comma inside a code list never reads as the filter separator.
    assert len(filters) == len(query["_typeFilter"])
    condition = parse_qs(urlsplit(filters["Condition"]).query)["code"][0].split(",")
    assert "http://hl7.org/fhir/sid/icd-10-cm|C79.51" in condition
    # The 267 treatment codes would make the URL too long: the status filter stays.
    assert filters["Procedure"].startswith("Procedure?status=")
    assert "code=" not in filters["Procedure"]
    assert "MedicationRequest" not in filters  # a source without a filter: exported whole


@respx.mock
def test_polling_honours_retry_after_and_retries_429_and_5xx(
    tmp_path: Path, sleeps: Sleeps
) -> None:
    kick_off()
    transient = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "transient", "diagnostics": "busy"}],
    }
    status = respx.get(STATUS).mock(
        side_effect=[
            httpx.Response(202, headers={"Retry-After": "3", "X-Progress": "10% [done]"}),
            httpx.Response(429, headers={"Retry-After": "7"}),
            httpx.Response(503),
            httpx.Response(500, json=transient),
            httpx.Response(202, headers={"X-Progress": "90%"}),
            httpx.Response(200, json=manifest()),
        ]
    )
    notes = Notes()
    report = run(export(tmp_path, sleeps, progress=notes, poll=PollPolicy(min_interval=0.01)))
    assert status.call_count == 6
    assert sleeps.calls[:2] == [3.0, 7.0]
    # Jittered back-off, never below the minimum interval.
    assert 0.01 <= sleeps.calls[2] <= 0.4 and 0.01 <= sleeps.calls[3] <= 0.8
    assert sleeps.calls[4] == 2.0  # no Retry-After: the default first wait
    assert notes.lines == ["10% [done]", "90%", "complete"]
    assert report.waited_seconds == pytest.approx(sum(sleeps.calls))


@respx.mock
def test_the_default_wait_grows_to_its_cap(tmp_path: Path, sleeps: Sleeps) -> None:
    kick_off()
    respx.get(STATUS).mock(
        side_effect=[httpx.Response(202)] * 6 + [httpx.Response(200, json=manifest())]
    )
    run(export(tmp_path, sleeps, poll=PollPolicy(first=2.0, cap=10.0)))
    assert sleeps.calls == [2.0, 3.0, 4.5, 6.75, 10.0, 10.0]


@respx.mock
def test_a_very_long_retry_after_is_shortened_to_the_configured_limit(
    tmp_path: Path, sleeps: Sleeps
) -> None:
    kick_off()
    respx.get(STATUS).mock(
        side_effect=[
            httpx.Response(202, headers={"Retry-After": "120"}),
            httpx.Response(200, json=manifest()),
        ]
    )
    run(export(tmp_path, sleeps, poll=PollPolicy(max_retry_after=5.0)))
    assert sleeps.calls == [5.0]


@respx.mock
def test_too_many_transient_failures_in_a_row_stop_the_run(tmp_path: Path, sleeps: Sleeps) -> None:
    kick_off()
    respx.get(STATUS).mock(return_value=httpx.Response(503))
    with pytest.raises(FhirUnavailableError, match="4 times in a row"):
        run(export(tmp_path, sleeps))
    # The job is kept for the next run to resume.
    saved = json.loads((tmp_path / "export.json").read_text())["jobs"][-1]
    assert saved["status_url"] == STATUS and saved["phase"] == "running"


@respx.mock
def test_a_failed_export_carries_the_operation_outcome(tmp_path: Path, sleeps: Sleeps) -> None:
    kick_off()
    failure = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception", "diagnostics": "disk full"}],
    }
    respx.get(STATUS).mock(return_value=httpx.Response(500, json=failure))
    with pytest.raises(BulkExportError) as caught:
        run(export(tmp_path, sleeps))
    assert caught.value.status == 500 and caught.value.diagnostics == "disk full"
    assert "disk full" not in str(caught.value)  # diagnostics may quote patient data


@respx.mock
def test_waiting_longer_than_allowed_stops_and_keeps_the_job(
    tmp_path: Path, sleeps: Sleeps
) -> None:
    kick_off()
    respx.get(STATUS).mock(return_value=httpx.Response(202, headers={"Retry-After": "60"}))
    with pytest.raises(BulkExportError, match="run the same command again"):
        run(export(tmp_path, sleeps, poll=PollPolicy(max_wait=200)))
    assert sleeps.calls == [60.0, 60.0, 60.0]


@respx.mock
def test_a_server_refusing_type_filter_gets_the_kick_off_without_it(
    tmp_path: Path, sleeps: Sleeps
) -> None:
    refused = {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
    route = respx.get(path__regex=r"/\$export$").mock(
        side_effect=[
            httpx.Response(400, json=refused),
            httpx.Response(202, headers={"Content-Location": STATUS}),
        ]
    )
    respx.get(STATUS).mock(return_value=httpx.Response(200, json=manifest()))
    filtered = ExportRequest("patient", types=("Condition",), type_filters=("Condition?code=x",))
    report = run(export(tmp_path, sleeps, request=filtered))
    assert "_typeFilter" in str(route.calls[0].request.url)
    assert "_typeFilter" not in str(route.calls[1].request.url)
    assert report.request.type_filters == ()
    assert any("without it" in note for note in report.notes)


# --- downloads --------------------------------------------------------------------------------


@respx.mock
def test_files_are_written_as_the_reader_names_them_and_the_job_deleted(
    tmp_path: Path, sleeps: Sleeps
) -> None:
    kick_off()
    respx.get(STATUS).mock(
        return_value=httpx.Response(
            200,
            json=manifest(
                ("Patient", f"{BASE}/files/a"),
                ("Condition", f"{BASE}/files/b"),
                ("Condition", f"{BASE}/files/c"),
            ),
        )
    )
    deleted = respx.delete(STATUS).mock(return_value=httpx.Response(202))
    respx.get(f"{BASE}/files/a").mock(return_value=httpx.Response(200, content=PATIENT))
    respx.get(f"{BASE}/files/b").mock(return_value=httpx.Response(200, content=CONDITION))
    respx.get(f"{BASE}/files/c").mock(return_value=httpx.Response(200, content=b""))
    report = run(export(tmp_path, sleeps, delete=True))
    assert sorted(p.name for p in tmp_path.glob("*.ndjson")) == [
        "Condition.1.ndjson",
        "Condition.2.ndjson",
        "Patient.1.ndjson",
    ]
    assert (tmp_path / "Patient.1.ndjson").read_bytes() == PATIENT
    assert report.files == 3 and report.downloaded == 3
    assert deleted.call_count == 1
    job = json.loads((tmp_path / "export.json").read_text())["jobs"][-1]
    assert job["phase"] == "finished" and job["deleted"] is True


@respx.mock
def test_a_restarted_run_resumes_the_cut_file_and_skips_the_finished_one(
    tmp_path: Path, sleeps: Sleeps
) -> None:
    kicks = kick_off()
    respx.get(STATUS).mock(
        return_value=httpx.Response(
            200, json=manifest(("Patient", f"{BASE}/files/a"), ("Condition", f"{BASE}/files/b"))
        )
    )
    first = respx.get(f"{BASE}/files/a").mock(return_value=httpx.Response(200, content=PATIENT))
    cut_at = len(CONDITION) // 2
    second = respx.get(f"{BASE}/files/b").mock(
        return_value=httpx.Response(
            200,
            headers={"ETag": '"v1"', "Content-Length": str(len(CONDITION))},
            stream=CutStream(CONDITION, cut_at),
        )
    )
    # One attempt only: the run stops with the second file half there.
    with pytest.raises(FhirUnavailableError):
        run(export(tmp_path, sleeps, attempts=1))
    assert (tmp_path / "Condition.1.part").read_bytes() == CONDITION[:cut_at]
    assert (tmp_path / "Patient.1.ndjson").read_bytes() == PATIENT

    second.mock(
        return_value=httpx.Response(
            206,
            headers={"Content-Range": f"bytes {cut_at}-{len(CONDITION) - 1}/{len(CONDITION)}"},
            content=CONDITION[cut_at:],
        )
    )
    report = run(export(tmp_path, sleeps))
    assert kicks.call_count == 1  # the same job, not a new export
    assert first.call_count == 1  # the finished file is not fetched again
    resumed = second.calls.last.request
    assert resumed.headers["Range"] == f"bytes={cut_at}-"
    assert resumed.headers["If-Range"] == '"v1"'
    assert (tmp_path / "Condition.1.ndjson").read_bytes() == CONDITION
    assert not list(tmp_path.glob("*.part"))
    assert report.resumed and report.downloaded == 1


@respx.mock
def test_a_server_without_ranges_has_the_cut_file_fetched_again(
    tmp_path: Path, sleeps: Sleeps
) -> None:
    kick_off()
    respx.get(STATUS).mock(
        return_value=httpx.Response(200, json=manifest(("Condition", f"{BASE}/files/b")))
    )
    route = respx.get(f"{BASE}/files/b").mock(
        side_effect=[
            httpx.Response(200, stream=CutStream(CONDITION, 10)),
            httpx.Response(200, content=CONDITION),  # Range ignored: the whole file again
        ]
    )
    run(export(tmp_path, sleeps))
    assert route.call_count == 2
    assert (tmp_path / "Condition.1.ndjson").read_bytes() == CONDITION


@respx.mock
def test_a_gzip_encoded_file_is_stored_gzipped(tmp_path: Path, sleeps: Sleeps) -> None:
    import gzip

    kick_off()
    respx.get(STATUS).mock(
        return_value=httpx.Response(200, json=manifest(("Patient", f"{BASE}/files/a")))
    )
    body = gzip.compress(PATIENT)
    respx.get(f"{BASE}/files/a").mock(
        return_value=httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=body)
    )
    run(export(tmp_path, sleeps))
    assert gzip.decompress((tmp_path / "Patient.1.ndjson.gz").read_bytes()) == PATIENT


@respx.mock
def test_an_expired_output_url_is_reported_and_the_next_run_starts_over(
    tmp_path: Path, sleeps: Sleeps
) -> None:
    kicks = kick_off()
    status = respx.get(STATUS).mock(
        return_value=httpx.Response(
            200, json=manifest(("Patient", f"{BASE}/files/a"), ("Condition", f"{BASE}/files/b"))
        )
    )
    respx.get(f"{BASE}/files/a").mock(return_value=httpx.Response(200, content=PATIENT))
    gone = respx.get(f"{BASE}/files/b").mock(return_value=httpx.Response(410))
    with pytest.raises(ExportGoneError, match="Run the same command again"):
        run(export(tmp_path, sleeps))
    assert json.loads((tmp_path / "export.json").read_text())["jobs"][-1]["phase"] == "expired"

    status.mock(return_value=httpx.Response(200, json=manifest(("Patient", f"{BASE}/files/new"))))
    respx.get(f"{BASE}/files/new").mock(return_value=httpx.Response(200, content=PATIENT))
    run(export(tmp_path, sleeps))
    assert kicks.call_count == 2 and gone.call_count == 1
    assert sorted(p.name for p in tmp_path.glob("*.ndjson")) == ["Patient.1.ndjson"]


@respx.mock
def test_the_cli_reports_an_expired_export_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kick_off()
    respx.get(STATUS).mock(
        return_value=httpx.Response(200, json=manifest(("Patient", f"{BASE}/files/a")))
    )
    respx.get(f"{BASE}/files/a").mock(return_value=httpx.Response(404))
    code = main(["export", "--fhir-url", BASE, "--out", str(tmp_path), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no longer available" in err and "Run the same command again" in err
    assert "Traceback" not in err


# --- credentials ------------------------------------------------------------------------------


def _download_auth(
    tmp_path: Path, sleeps: Sleeps, url: str, requires_token: bool
) -> list[httpx.Request]:
    kick_off()
    respx.get(STATUS).mock(
        return_value=httpx.Response(200, json=manifest(("Patient", url), token=requires_token))
    )
    route = respx.get(url).mock(return_value=httpx.Response(200, content=PATIENT))
    run(export(tmp_path, sleeps, auth=BearerAuth("s3cret")))
    return [call.request for call in route.calls]


@respx.mock
def test_files_get_the_token_only_when_the_manifest_requires_it(
    tmp_path: Path, sleeps: Sleeps
) -> None:
    (without,) = _download_auth(tmp_path / "a", sleeps, f"{BASE}/files/a", False)
    assert "Authorization" not in without.headers
    (with_token,) = _download_auth(tmp_path / "b", sleeps, f"{BASE}/files/b", True)
    assert with_token.headers["Authorization"] == "Bearer s3cret"


@respx.mock
def test_the_token_is_never_sent_to_another_origin(tmp_path: Path, sleeps: Sleeps) -> None:
    kick_off()
    respx.get(STATUS).mock(
        return_value=httpx.Response(
            200, json=manifest(("Patient", "https://storage.example/a"), token=True)
        )
    )
    elsewhere = respx.get("https://storage.example/a").mock(
        return_value=httpx.Response(200, content=PATIENT)
    )
    with pytest.raises(BulkExportError, match="refusing to send the token"):
        run(export(tmp_path, sleeps, auth=BearerAuth("s3cret")))
    assert elsewhere.call_count == 0


@respx.mock
def test_a_redirect_to_storage_is_followed_without_the_token(
    tmp_path: Path, sleeps: Sleeps
) -> None:
    kick_off()
    respx.get(STATUS).mock(
        return_value=httpx.Response(200, json=manifest(("Patient", f"{BASE}/files/a"), token=True))
    )
    here = respx.get(f"{BASE}/files/a").mock(
        return_value=httpx.Response(302, headers={"Location": "https://storage.example/signed"})
    )
    there = respx.get("https://storage.example/signed").mock(
        return_value=httpx.Response(200, content=PATIENT)
    )
    run(export(tmp_path, sleeps, auth=BearerAuth("s3cret")))
    assert here.calls.last.request.headers["Authorization"] == "Bearer s3cret"
    assert "Authorization" not in there.calls.last.request.headers
    assert (tmp_path / "Patient.1.ndjson").read_bytes() == PATIENT


@respx.mock
def test_the_status_url_must_be_on_the_servers_origin(tmp_path: Path, sleeps: Sleeps) -> None:
    kick_off("https://elsewhere.example/status/1")
    with pytest.raises(BulkExportError, match="another origin"):
        run(export(tmp_path, sleeps, auth=BearerAuth("s3cret")))


@respx.mock
def test_smart_credentials_go_with_streamed_downloads(tmp_path: Path, sleeps: Sleeps) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    auth = SmartBackendAuth(client_id="prescreen", private_key_pem=pem, kid="k1", token_url=TOKEN)
    tokens = respx.post(TOKEN).mock(
        return_value=httpx.Response(200, json={"access_token": "t1", "expires_in": 3600})
    )
    respx.get(f"{BASE}/metadata").mock(return_value=httpx.Response(200, json={}))
    kick_off()
    respx.get(STATUS).mock(
        return_value=httpx.Response(
            200, json=manifest(("Condition", f"{BASE}/files/b"), token=True)
        )
    )
    cut_at = len(CONDITION) // 2
    route = respx.get(f"{BASE}/files/b").mock(
        return_value=httpx.Response(200, stream=CutStream(CONDITION, cut_at))
    )
    with pytest.raises(FhirUnavailableError):
        run(export(tmp_path, sleeps, attempts=1, auth=auth))
    assert route.calls.last.request.headers["Authorization"] == "Bearer t1"
    assert tokens.call_count == 1
    # Written as it came: a flow that read whole bodies first would have lost the half.
    assert (tmp_path / "Condition.1.part").read_bytes() == CONDITION[:cut_at]


# --- error files ------------------------------------------------------------------------------


@pytest.fixture
def no_type_filter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PRESCREEN_BULK_TYPE_FILTER", "never")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@respx.mock
def test_error_file_entries_become_input_issues_of_the_screening(
    tmp_path: Path, no_type_filter: None
) -> None:
    kick_off()
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "processing", "diagnostics": "Jane Doe: unreadable"},
            {"severity": "warning", "code": "informational", "diagnostics": "slow"},
        ],
    }
    respx.get(STATUS).mock(
        return_value=httpx.Response(
            200,
            json=manifest(
                ("Patient", f"{BASE}/files/p"),
                ("Condition", f"{BASE}/files/c"),
                errors=(f"{BASE}/files/e",),
            ),
        )
    )
    respx.get(f"{BASE}/files/p").mock(return_value=httpx.Response(200, content=PATIENT))
    respx.get(f"{BASE}/files/c").mock(return_value=httpx.Response(200, content=CONDITION))
    respx.get(f"{BASE}/files/e").mock(
        return_value=httpx.Response(200, content=json.dumps(outcome).encode() + b"\n")
    )
    respx.delete(STATUS).mock(return_value=httpx.Response(202))
    out = tmp_path / "out"
    command = ["screen", "--trial", "relieve", "--fhir-url", BASE, "--bulk", "--as-of"]
    code = main([*command, "2026-06-15", "--out", str(out), "--no-progress"])
    assert code == 1  # finished, with doubtful input
    issues = [i for i in read_ndjson(out / "issues.ndjson") if i["kind"] == "export-error"]
    assert [(i["file"], i["line"]) for i in issues] == [
        ("bulk/errors/OperationOutcome.1.ndjson", 1)
    ]
    assert "Jane" not in json.dumps(issues)
    assert [v["patient"] for v in read_ndjson(out / "verdicts.ndjson")] == ["Patient/p1"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["issues"]["by_kind"]["export-error"] == 1
    # The error names no type: any type of the export may be missing records, and no criterion
    # rests on their absence.
    lost = {entry["type"]: entry["reason"] for entry in summary["sources_unavailable"]}
    assert set(lost) == {t for t in EXPORT_TYPES if t != "Patient"}
    assert "does not attribute to a type" in lost["Condition"]


@respx.mock
def test_a_failure_the_error_file_names_makes_that_type_lost(
    tmp_path: Path, no_type_filter: None
) -> None:
    kick_off()
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "exception",
                "diagnostics": "Failed to export 3.Observation.ndjson",
            },
            {
                "severity": "error",
                "code": "exception",
                "diagnostics": "Failed to export 4.Patient.ndjson",
            },
        ],
    }
    respx.get(STATUS).mock(
        return_value=httpx.Response(
            200,
            json=manifest(
                ("Patient", f"{BASE}/files/p"),
                ("Condition", f"{BASE}/files/c"),
                errors=(f"{BASE}/files/e",),
            ),
        )
    )
    respx.get(f"{BASE}/files/p").mock(return_value=httpx.Response(200, content=PATIENT))
    respx.get(f"{BASE}/files/c").mock(return_value=httpx.Response(200, content=CONDITION))
    respx.get(f"{BASE}/files/e").mock(
        return_value=httpx.Response(200, content=json.dumps(outcome).encode() + b"\n")
    )
    respx.delete(STATUS).mock(return_value=httpx.Response(202))
    out = tmp_path / "out"
    command = ["screen", "--trial", "relieve", "--fhir-url", BASE, "--bulk", "--as-of"]
    assert main([*command, "2026-06-15", "--out", str(out), "--no-progress"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    lost = {e["type"]: e["criteria"] for e in summary["sources_unavailable"]}
    assert lost == {"Observation": ["pain-type", "pain-nrs", "survival"], "Patient": []}
    messages = [i["message"] for i in read_ndjson(out / "issues.ndjson")]
    assert any(m.startswith("Patient records") and "is not screened" in m for m in messages)
    # The patient whose Patient record came is screened; its own record is no gap.
    [verdict] = read_ndjson(out / "verdicts.ndjson")
    assert verdict["criteria"]["age"]["result"] == "met"


@respx.mock
def test_the_export_is_screened_the_same_by_several_workers(
    tmp_path: Path, no_type_filter: None
) -> None:
    kick_off()
    respx.get(STATUS).mock(
        return_value=httpx.Response(
            200, json=manifest(("Patient", f"{BASE}/files/p"), ("Condition", f"{BASE}/files/c"))
        )
    )
    respx.get(f"{BASE}/files/p").mock(return_value=httpx.Response(200, content=PATIENT))
    respx.get(f"{BASE}/files/c").mock(return_value=httpx.Response(200, content=CONDITION))
    respx.delete(STATUS).mock(return_value=httpx.Response(202))
    command = ["screen", "--trial", "relieve", "--fhir-url", BASE, "--bulk", "--as-of"]
    command += ["2026-06-15", "--no-progress", "--out"]
    assert main([*command, str(tmp_path / "one"), "--workers", "1"]) == 0
    assert main([*command, str(tmp_path / "two"), "--workers", "2"]) == 0
    for name in ("verdicts.ndjson", "ResearchSubject.ndjson", "summary.json"):
        one = (tmp_path / "one" / name).read_text().replace(str(tmp_path / "one"), "OUT")
        two = (tmp_path / "two" / name).read_text().replace(str(tmp_path / "two"), "OUT")
        if name == "summary.json":
            one, two = json.loads(one)["verdicts"], json.loads(two)["verdicts"]
        assert one == two


@respx.mock
def test_an_empty_export_is_reported_and_its_job_deleted(
    tmp_path: Path, no_type_filter: None, capsys: pytest.CaptureFixture[str]
) -> None:
    kick_off()
    respx.get(STATUS).mock(return_value=httpx.Response(200, json=manifest()))
    deleted = respx.delete(STATUS).mock(return_value=httpx.Response(202))
    command = ["screen", "--trial", "relieve", "--fhir-url", BASE, "--bulk", "--group", "g1"]
    assert main([*command, "--out", str(tmp_path), "--no-progress"]) == 2
    assert "exported nothing" in capsys.readouterr().err
    assert deleted.call_count == 1


@respx.mock
def test_screen_bulk_refuses_rest_only_options(tmp_path: Path) -> None:
    command = ["screen", "--trial", "relieve", "--fhir-url", BASE, "--bulk", "--out"]
    assert main([*command, str(tmp_path), "--write-back"]) == 2
    assert main([*command, str(tmp_path), "--group", "g", "--export-level", "system"]) == 2


# --- what the server supports -----------------------------------------------------------------


def _statement(definition: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": [{"mode": "server", "operation": [{"name": "export", "definition": definition}]}],
    }


@respx.mock
@pytest.mark.parametrize(
    ("definition", "parameters", "expected"),
    [
        (f"{BASE}/OperationDefinition/-s-export", ["_type", "_typeFilter"], True),
        (f"{BASE}/OperationDefinition/-s-export", ["_type", "_since"], False),
        ("http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export", [], True),
        ("http://hl7.org/fhir/OperationDefinition/export", [], False),
    ],
)
def test_type_filter_support_is_read_from_the_operation_definition(
    definition: str, parameters: list[str], expected: bool
) -> None:
    respx.get(f"{BASE}/metadata").mock(
        return_value=httpx.Response(200, json=_statement(definition))
    )
    operation = {
        "resourceType": "OperationDefinition",
        "parameter": [{"name": name, "use": "in"} for name in parameters],
    }
    respx.get(f"{BASE}/OperationDefinition/-s-export").mock(
        return_value=httpx.Response(200, json=operation)
    )
    respx.get(f"{BASE}/OperationDefinition").mock(return_value=httpx.Response(404))

    async def go() -> bool:
        async with FhirClient(BASE) as client:
            supported, _why = await type_filter_support(client)
            return supported

    assert run(go()) is expected


def test_export_requests_are_validated() -> None:
    with pytest.raises(PrescreenError, match="FHIR id"):
        ExportRequest("group", group_id="../x")
    with pytest.raises(PrescreenError, match="instant"):
        ExportRequest("patient", since="2026-01-01")
    assert ExportRequest("group", group_id="g1").path == "Group/g1/$export"
    assert ExportRequest("system").path == "$export"
