"""Defects an outside attack found (issue: hardening), each reproduced against the real service.

Bodies before credentials, byte limits on chunked bodies, 500s from odd input, /readyz sending a
FHIR request per call, /runs reading any folder, ids that walk to other paths of the FHIR server.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
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
