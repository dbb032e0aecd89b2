"""Clients lent the service's kept-alive connections (CDS Hooks calls): each sends its own
credentials and nothing of another call's, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from service.fhir.auth import BearerAuth
from service.fhir.client import SharedConnections


class _Recorder(BaseHTTPRequestHandler):
    """Answers every GET with an empty JSON object and a session cookie; remembers what each
    request carried and on which connection it came."""

    protocol_version = "HTTP/1.1"  # keep-alive
    seen: list[dict[str, Any]]

    def do_GET(self) -> None:
        self.seen.append(
            {
                "authorization": self.headers.get("Authorization"),
                "cookie": self.headers.get("Cookie"),
                "connection": self.client_address,
            }
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Set-Cookie", "session=of-the-first-caller; Path=/")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_address[1]}/fhir", seen
    finally:
        http.shutdown()
        http.server_close()


def test_each_call_sends_its_own_token_and_no_cookie_of_another(
    server: tuple[str, list[dict[str, Any]]],
) -> None:
    base, seen = server

    async def calls() -> None:
        shared = SharedConnections(timeout=30)
        try:
            async with shared.client(base, auth=BearerAuth("first")) as first:
                await first.get("metadata")
                await first.get("metadata")
            async with shared.client(base) as anonymous:
                await anonymous.get("metadata")
            async with shared.client(base, auth=BearerAuth("second")) as second:
                await second.get("metadata")
        finally:
            await shared.aclose()

    asyncio.run(calls())
    assert [s["authorization"] for s in seen] == [
        "Bearer first",
        "Bearer first",
        None,
        "Bearer second",
    ]
    assert [s["cookie"] for s in seen] == [None] * 4  # a server's session stays with no one
    assert len({s["connection"] for s in seen}) == 1  # one kept-alive connection for all


def test_a_closed_call_leaves_the_shared_connections_open(
    server: tuple[str, list[dict[str, Any]]],
) -> None:
    base, seen = server

    async def calls() -> None:
        shared = SharedConnections(timeout=30)
        try:
            for _ in range(3):
                async with shared.client(base) as client:
                    await client.get("metadata")
        finally:
            await shared.aclose()

    asyncio.run(calls())
    assert len(seen) == 3 and len({s["connection"] for s in seen}) == 1
