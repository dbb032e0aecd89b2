"""Defects an outside attack found (issue: hardening), each reproduced against the real service.

Bodies before credentials, byte limits on chunked bodies, 500s from odd input, /readyz sending a
FHIR request per call, /runs reading any folder, ids that walk to other paths of the FHIR server.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from service.settings import Settings
from tests.conftest import SAMPLE_DIR
from tests.integration.servers import SekmetServer, free_port
from tests.service.conftest import (
    API_KEY,
    NOTIFY_KEY,
    Helpers,
    RunningService,
    running_service,
    service_settings,
    wait_for,
)


def send_chunked(
    url: str, path: str, headers: dict[str, str], total: int, chunk: int = 64 * 1024
) -> tuple[int | None, int]:
    """POST ``total`` bytes chunk by chunk on a raw socket, stopping when the server answers or
    closes; returns (status or None, bytes sent). A server that reads the body before deciding
    would take it all."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    sent = 0
    status = None
    try:
        head = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", "Transfer-Encoding: chunked"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        frame = f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n"
        while sent < total:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += chunk
        else:
            sock.sendall(b"0\r\n\r\n")
        answer = b""
        try:
            while b"\r\n" not in answer:
                data = sock.recv(4096)
                if not data:
                    break
                answer += data
        except (ConnectionResetError, TimeoutError):
            pass
        if answer.startswith(b"HTTP/1.1 "):
            status = int(answer.split()[1])
    finally:
        sock.close()
    return status, sent


BIG = 64 * 1024 * 1024  # 64 MB: far above the test service's 200 KB limit


def test_an_unauthenticated_chunked_body_is_refused_before_it_is_read(
    service: RunningService,
) -> None:
    status, sent = send_chunked(service.url, "/screenings", {}, BIG)
    assert status == 401
    assert sent < BIG // 4, f"the service read {sent} bytes before refusing"


def test_an_authenticated_chunked_body_is_cut_at_the_limit(service: RunningService) -> None:
    status, sent = send_chunked(service.url, "/screenings", {"X-API-Key": API_KEY}, BIG)
    assert status == 413
    assert sent < BIG // 4, f"the service read {sent} bytes before refusing"


def test_validation_is_not_answered_before_authentication(service: RunningService) -> None:
    with httpx.Client(base_url=service.url, timeout=60) as anonymous:
        answer = anonymous.post("/screenings", json={"trial": ["not", "a", "trial"]})
        assert answer.status_code == 401
        answer = anonymous.post("/candidates/1/decision", content=b"{not json")
        assert answer.status_code == 401
        answer = anonymous.post("/notifications", content=b'{"resourceType": 1}')
        assert answer.status_code == 401


def test_validation_errors_do_not_echo_the_input(service: RunningService) -> None:
    with service.client() as client:
        answer = client.post(
            "/screenings", json={"trial": "relieve", "patients": ["Jane Doe 1961-02-03"]}
        )
    assert answer.status_code == 422
    assert "Jane" not in answer.text and "1961" not in answer.text
    assert answer.json()["detail"][0]["loc"] == ["body", "patients", 0]


HUGE = str(2**63)


@pytest.mark.parametrize(
    ("method", "path", "params", "body"),
    [
        ("GET", "/candidates", {"offset": HUGE}, None),
        ("GET", "/runs/r1/results", {"offset": HUGE}, None),
        ("POST", f"/candidates/{HUGE}/decision", None, {"status": "eligible"}),
        ("POST", "/candidates/99999999999/decision", None, {"status": "eligible"}),
        ("GET", "/candidates", {"since": "0001-01-01T00:00:00+14:00"}, None),
        ("GET", "/candidates", {"since": "9999-12-31T23:59:59-14:00"}, None),
        ("POST", "/screenings", None, b'{"trial": "relieve", "patients": ["p"], "as_of": 1e999}'),
        (
            "POST",
            "/screenings",
            None,
            {"trial": "relieve", "patients": ["p"], "as_of": "0001-01-01"},
        ),
        ("POST", "/runs", None, {"trial": "relieve", "as_of": "9999-12-31"}),
        ("POST", "/screenings", None, {"trial": "relieve", "patients": ["../metadata"]}),
        ("POST", "/runs", None, {"trial": "relieve", "patients": ["a?b"]}),
        # F10: a NUL reached PostgreSQL (500, or a dropped connection).
        ("GET", "/candidates", {"trial": "\x00"}, None),
        ("GET", "/candidates", {"status": "open\x00"}, None),
        ("GET", "/runs/a%00b", None, None),
        ("GET", "/runs/a%00b/results", None, None),
        ("POST", "/candidates/1/decision", None, {"status": "eligible", "note": "a\x00b"}),
    ],
)
def test_odd_input_is_a_clear_4xx_never_a_500(
    service: RunningService, method: str, path: str, params: Any, body: Any
) -> None:
    with service.client() as client:
        if isinstance(body, bytes):
            answer = client.request(
                method,
                path,
                params=params,
                content=body,
                headers={"content-type": "application/json"},
            )
        else:
            answer = client.request(method, path, params=params, json=body)
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.json()["detail"]


@pytest.mark.parametrize(
    "payload",
    [
        b'{"resourceType": "Bundle", "entry": {"resource": {}}}',
        b'{"resourceType": "Bundle", "entry": ["Observation/1"]}',
        b'{"resourceType": "Bundle", "entry": [{"resource": "Observation/1"}]}',
        b'{"resourceType": "Bundle", "entry": [{"fullUrl": 12}]}',
        b'{"resourceType": "Bundle", "entry": [{"fullUrl": "http://x/Observation/.."}]}',
        b'{"resourceType": ["Observation"], "id": "1"}',
        b'["Observation"]',
        b'{"resourceType": "Observation", "id": "../../metadata"}',
        b'{"resourceType": "Observation", "id": "x?_format=xml#"}',
        b'{"resourceType": "Observation", "id": ".."}',
    ],
)
def test_malformed_notifications_are_400_and_fetch_nothing(
    service: RunningService, payload: bytes
) -> None:
    with service.client(NOTIFY_KEY) as client:
        before = fhir_requests(client)
        answer = client.post(
            "/notifications", content=payload, headers={"content-type": "application/fhir+json"}
        )
        assert answer.status_code == 400, answer.text
        assert fhir_requests(client) == before


@pytest.mark.parametrize("resource_id", ["a%3Fb%3Dc", "x%23y", "%2E%2E", "a%2F..%2F..%2Fmetadata"])
def test_a_notification_path_id_that_is_not_a_fhir_id_is_refused(
    service: RunningService, resource_id: str
) -> None:
    with service.client(NOTIFY_KEY) as client:
        before = fhir_requests(client)
        answer = client.put(f"/notifications/Observation/{resource_id}", content=b"")
        assert answer.status_code in (400, 404), answer.text
        assert fhir_requests(client) == before


def fhir_requests(client: httpx.Client) -> float:
    """The service's own count of requests it sent to the FHIR server (Prometheus)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("prescreen_fhir_requests_total "):
            return float(line.split()[1])
    raise AssertionError("no FHIR request counter in /metrics")


@pytest.fixture
def patient_service(
    sekmet: SekmetServer, helpers: Helpers, tmp_path: Path
) -> Iterator[RunningService]:
    """A service with a long readiness cache and NDJSON runs confined to one folder."""
    port = free_port()
    settings: Settings = service_settings(
        sekmet,
        helpers,
        f"sqlite:///{tmp_path / 'state.db'}",
        port,
    ).model_copy(update={"readiness_cache_seconds": 3600.0, "ndjson_roots": str(SAMPLE_DIR)})
    with running_service(settings, port) as running:
        yield running


def test_readyz_does_not_send_a_fhir_request_per_call(patient_service: RunningService) -> None:
    with patient_service.client() as client:
        assert client.get("/readyz").status_code == 200
        after_first = fhir_requests(client)
        for _ in range(20):
            assert client.get("/readyz").json() == {"database": "ok", "fhir": "ok"}
        assert fhir_requests(client) == after_first


@pytest.mark.parametrize(
    "path",
    [
        "/etc",
        str(SAMPLE_DIR / ".." / ".." / "tests"),
        str(SAMPLE_DIR / "missing"),
        "relative/path",
        "",
    ],
)
def test_ndjson_runs_read_only_configured_folders(
    patient_service: RunningService, path: str
) -> None:
    with patient_service.client() as client:
        answer = client.post("/runs", json={"trial": "relieve", "source": "ndjson", "path": path})
        assert answer.status_code == 422
        # Missing and not allowed read the same: the API reveals nothing about the host.
        assert answer.json()["detail"] == (
            "'path' is not an NDJSON folder under the service's allowed folders"
        )
        allowed = client.post(
            "/runs", json={"trial": "relieve", "source": "ndjson", "path": str(SAMPLE_DIR)}
        )
        assert allowed.status_code == 202


def test_a_nul_in_an_anonymous_sign_in_is_no_500(service: RunningService) -> None:
    """F10: on PostgreSQL a NUL in the user name of /ui/login gave 500 or a dropped
    connection."""
    with httpx.Client(base_url=service.url, timeout=60) as browser:
        form = browser.get("/ui/login")
        token = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        answer = browser.post(
            "/ui/login", data={"username": "a\x00b", "password": "x\x00", "csrf_token": token}
        )
        assert answer.status_code == 401
        assert browser.get("/ui/login?next=%00").status_code == 400


class FailingFhirServer:
    """A FHIR server that answers every request 503, counting them (a real HTTP server)."""

    def __init__(self) -> None:
        self.requests = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with outer._lock:
                    outer.requests += 1
                time.sleep(0.2)  # a slow failure: the calls below all come while it runs
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def test_concurrent_readiness_probes_share_one_fhir_check(
    helpers: Helpers, sekmet: SekmetServer, tmp_path: Path
) -> None:
    """F14: 40 concurrent anonymous /readyz while the FHIR server answers 503 sent 200 FHIR
    requests (5 tries each, nothing shared while a check ran). Now: one check, one try."""
    failing = FailingFhirServer()
    port = free_port()
    settings = service_settings(sekmet, helpers, f"sqlite:///{tmp_path / 'state.db'}", port)
    settings = settings.model_copy(
        update={"fhir_url": failing.url, "readiness_cache_seconds": 3600.0}
    )
    try:
        with running_service(settings, port) as running:

            async def probe_all() -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=running.url, timeout=120) as client:
                    return list(await asyncio.gather(*(client.get("/readyz") for _ in range(40))))

            answers = asyncio.run(probe_all())
            assert {a.status_code for a in answers} == {503}
            assert {a.json()["fhir"] for a in answers} == {"FhirUnavailableError"}
            assert failing.requests == 1
    finally:
        failing.close()


def test_an_ndjson_run_reads_no_file_linked_from_outside_the_allowed_folders(
    sekmet: SekmetServer, helpers: Helpers, tmp_path: Path
) -> None:
    """N13: a symbolic link inside an allowed folder, to a file outside every allowed folder,
    was read by POST /runs."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "hospital").mkdir(parents=True)
    outside.mkdir()
    for path in SAMPLE_DIR.glob("*.ndjson"):
        if path.name != "Condition.ndjson":
            (allowed / "hospital" / path.name).write_bytes(path.read_bytes())
    (outside / "Condition.ndjson").write_bytes((SAMPLE_DIR / "Condition.ndjson").read_bytes())
    (allowed / "hospital" / "Condition.ndjson").symlink_to(outside / "Condition.ndjson")
    port = free_port()
    settings = service_settings(sekmet, helpers, f"sqlite:///{tmp_path / 'state.db'}", port)
    settings = settings.model_copy(update={"ndjson_roots": str(allowed)})
    with running_service(settings, port) as running, running.client() as client:
        started = client.post(
            "/runs",
            json={"trial": "relieve", "source": "ndjson", "path": str(allowed / "hospital")},
        )
        assert started.status_code == 202, started.text
        run_id = started.json()["id"]
        done = wait_for(
            lambda: (state := client.get(f"/runs/{run_id}").json())["status"] == "done" and state
        )
        assert done["input_issues"] == {"outside-allowed-folders": 1}
        # Without the conditions, no patient has a spinal metastasis: nobody is a candidate.
        assert done["counts"] == {"ineligible": 300}


def test_an_ndjson_run_skips_a_line_too_long_and_says_so(
    sekmet: SekmetServer, helpers: Helpers, tmp_path: Path
) -> None:
    """N12 through the service: POST /runs went from 130 MB to 5 GB on one long line."""
    folder = tmp_path / "hospital"
    folder.mkdir()
    for path in SAMPLE_DIR.glob("*.ndjson"):
        (folder / path.name).write_bytes(path.read_bytes())
    limit = 4 << 20
    huge = b'{"resourceType":"Observation","id":"x","note":[{"text":"' + b"x" * limit + b'"}]}'
    with (folder / "Observation.ndjson").open("ab") as handle:
        handle.write(huge + b"\n")
    port = free_port()
    settings = service_settings(sekmet, helpers, f"sqlite:///{tmp_path / 'state.db'}", port)
    settings = settings.model_copy(update={"ndjson_roots": str(tmp_path), "max_line_bytes": limit})
    with running_service(settings, port) as running, running.client() as client:
        started = client.post(
            "/runs", json={"trial": "relieve", "source": "ndjson", "path": str(folder)}
        )
        assert started.status_code == 202, started.text
        run_id = started.json()["id"]
        done = wait_for(
            lambda: (state := client.get(f"/runs/{run_id}").json())["status"] == "done" and state
        )
        assert done["input_issues"] == {"line-too-long": 1}
        assert done["progress"] == {"done": 300, "total": 300}  # every patient screened


def test_an_oauth_token_living_for_years_is_refused(
    service: RunningService, helpers: Helpers
) -> None:
    """N15: JWTs expiring ten years out were accepted."""
    now = int(time.time())
    claims = {
        "iss": "https://idp.example",
        "aud": "prescreen",
        "sub": "engine",
        "scope": "candidates",
    }

    def status(**times: int) -> int:
        token = helpers.keys.sign({**claims, **times})
        answer = httpx.get(
            f"{service.url}/candidates", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        return answer.status_code

    assert status(exp=now + 3600, iat=now) == 200
    assert status(exp=now + 3600) == 200  # no iat: counted from now
    assert status(exp=now + 10 * 365 * 86400, iat=now) == 401
    assert status(exp=now + 10 * 365 * 86400) == 401
    assert status(exp=now + 3600, iat=now - 3 * 86400) == 401  # issued for days on end
