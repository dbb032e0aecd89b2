"""Signing keys (JWKS): fetched without blocking the event loop, cached, failures too, and
fetched again for an unknown kid at most once per interval. Real servers on 127.0.0.1: a JWKS
host that counts its requests, and a TCP server that accepts connections and never answers."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from service.api.security import JwksCache, SigningKeyError
from service.settings import Settings
from tests.integration.servers import free_port
from tests.service.conftest import Keys, run, running_service, wait_for

pytestmark = pytest.mark.integration


def new_keys(kid: str = "k1") -> Keys:
    return Keys(rsa.generate_private_key(public_exponent=65537, key_size=2048), kid=kid)


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers (until closed)."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.1)
        self.port = int(self._socket.getsockname()[1])
        self.connections: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    @property
    def accepted(self) -> int:
        return len(self.connections)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._socket.accept()
            except (TimeoutError, OSError):
                continue
            self.connections.append(connection)

    def open_connections(self) -> int:
        """Connections the client has not closed: it is still waiting for an answer."""
        still_open = 0
        for connection in self.connections:
            connection.setblocking(False)
            try:
                while connection.recv(65536):  # drain the request, never answered
                    pass
            except BlockingIOError:
                still_open += 1  # nothing more to read, and not closed
            except OSError:
                pass
        return still_open

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=10)
        for connection in self.connections:
            connection.close()
        self._socket.close()


class JwksHost:
    """Serves a JWK Set that a test may change, fail (500) or hold back; counts the GETs."""

    def __init__(self, keys: Keys) -> None:
        self.jwks: dict[str, Any] = keys.jwks()
        self.status = 200
        self.hits = 0
        self.release = threading.Event()
        self.release.set()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host.hits += 1
                host.release.wait(timeout=60)
                payload = json.dumps(host.jwks).encode()
                self.send_response(host.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def jwks_host() -> Iterator[JwksHost]:
    host = JwksHost(new_keys("k1"))
    yield host
    host.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the cache on its own ------------------------------------------------------------------------


def test_keys_are_fetched_once_and_reused(jwks_host: JwksHost) -> None:
    cache = JwksCache(timeout=30, ttl=300, refresh_interval=30)

    async def go() -> None:
        for _ in range(5):
            assert (await cache.key(jwks_host.url, "k1"))["kid"] == "k1"

    run(go())
    assert jwks_host.hits == 1


def test_an_unknown_kid_refreshes_at_most_once_per_interval(jwks_host: JwksHost) -> None:
    clock = Clock()
    cache = JwksCache(timeout=30, ttl=300, refresh_interval=30, clock=clock)

    async def go() -> None:
        await cache.key(jwks_host.url, "k1")
        jwks_host.jwks = new_keys("k2").jwks()  # the issuer rotates its key
        clock.now += 1
        with pytest.raises(SigningKeyError):
            await cache.key(jwks_host.url, "k2")  # fetched a second ago: not again yet
        assert jwks_host.hits == 1
        clock.now += 30
        assert (await cache.key(jwks_host.url, "k2"))["kid"] == "k2"
        assert jwks_host.hits == 2
        for _ in range(10):  # a flood of made-up kids costs no fetch within the interval
            with pytest.raises(SigningKeyError):
                await cache.key(jwks_host.url, "made-up")
        assert jwks_host.hits == 2

    run(go())


def test_failures_are_cached_and_known_keys_outlive_them(jwks_host: JwksHost) -> None:
    clock = Clock()
    cache = JwksCache(timeout=30, ttl=300, refresh_interval=30, clock=clock)

    async def go() -> None:
        jwks_host.status = 500
        for _ in range(5):
            with pytest.raises(SigningKeyError):
                await cache.key(jwks_host.url, "k1")
        assert jwks_host.hits == 1  # the failure is remembered for the interval
        clock.now += 30
        jwks_host.status = 200
        assert (await cache.key(jwks_host.url, "k1"))["kid"] == "k1"
        assert jwks_host.hits == 2
        # Stale keys and a key server down: the keys known stay usable meanwhile.
        jwks_host.status = 500
        clock.now += 400
        assert (await cache.key(jwks_host.url, "k1"))["kid"] == "k1"
        assert jwks_host.hits == 3

    run(go())


def test_concurrent_callers_share_one_fetch(jwks_host: JwksHost) -> None:
    cache = JwksCache(timeout=60, ttl=300, refresh_interval=30)
    jwks_host.release.clear()

    async def go() -> list[dict[str, Any]]:
        callers = [asyncio.create_task(cache.key(jwks_host.url, "k1")) for _ in range(20)]
        while jwks_host.hits == 0:
            await asyncio.sleep(0.01)
        jwks_host.release.set()
        return await asyncio.gather(*callers)

    assert [key["kid"] for key in run(go())] == ["k1"] * 20
    assert jwks_host.hits == 1


def test_a_key_server_that_never_answers_is_given_up_on() -> None:
    silent = SilentServer()
    try:
        cache = JwksCache(timeout=0.5, ttl=300, refresh_interval=30)

        async def go() -> None:
            for _ in range(3):
                with pytest.raises(SigningKeyError):
                    # The outer limit only keeps a broken cache from hanging the test.
                    await asyncio.wait_for(cache.key(silent.url, "k1"), 120)

        run(go())
        assert silent.accepted == 1  # the second and third callers were answered from memory
    finally:
        silent.close()


# --- the running service -------------------------------------------------------------------------


def oauth_settings(database_url: str, port: int, jwks_url: str, **extra: Any) -> Settings:
    return Settings(
        fhir_url="http://127.0.0.1:9/fhir",  # never contacted by these tests
        database_url=database_url,
        public_url=f"http://127.0.0.1:{port}",
        api_keys="{}",
        oauth_jwks_url=jwks_url,
        oauth_issuer="https://idp.example",
        oauth_audience="prescreen",
        **extra,
    )


def oauth_token(keys: Keys) -> str:
    now = int(time.time())
    claims = {
        "iss": "https://idp.example",
        "aud": "prescreen",
        "sub": "engine",
        "exp": now + 600,
        "scope": "candidates decide",
    }
    return keys.sign(claims)


def test_healthz_answers_while_a_bearer_request_waits_for_keys(database_url: str) -> None:
    silent = SilentServer()
    port = free_port()
    # A long JWKS timeout: the bearer request stays pending until the key server goes away.
    settings = oauth_settings(database_url, port, silent.url, jwks_timeout_seconds=300)
    try:
        with running_service(settings, port) as running, ThreadPoolExecutor(1) as pool:
            headers = {"Authorization": f"Bearer {oauth_token(new_keys())}"}
            url = f"{running.url}/candidates"
            pending = pool.submit(httpx.get, url, headers=headers, timeout=600)
            try:
                wait_for(lambda: silent.accepted >= 1, 60)  # the service is waiting for keys
                health = httpx.get(f"{running.url}/healthz", timeout=120)
                assert health.json() == {"status": "ok"}
                assert not pending.done(), "/healthz was answered only after the bearer request"
                assert silent.open_connections() == 1  # and the key fetch is still in flight
            finally:
                silent.close()  # the key server goes away: the bearer request is refused
            assert pending.result(timeout=120).status_code == 401
    finally:
        silent.close()


def test_a_token_that_is_no_jwt_never_reaches_the_key_server(database_url: str) -> None:
    silent = SilentServer()
    port = free_port()
    try:
        with running_service(oauth_settings(database_url, port, silent.url), port) as running:
            answer = httpx.get(
                f"{running.url}/candidates", headers={"Authorization": "Bearer x"}, timeout=120
            )
            assert answer.status_code == 401
        assert silent.accepted == 0
    finally:
        silent.close()


def test_bearer_requests_share_cached_keys(database_url: str, jwks_host: JwksHost) -> None:
    port = free_port()
    keys = new_keys("k1")
    jwks_host.jwks = keys.jwks()
    with running_service(oauth_settings(database_url, port, jwks_host.url), port) as running:
        headers = {"Authorization": f"Bearer {oauth_token(keys)}"}
        with httpx.Client(base_url=running.url, headers=headers, timeout=120) as client:
            for _ in range(5):
                assert client.get("/candidates").status_code == 200
            # A POST is authenticated before its body is read, with the same cached keys.
            decided = client.post("/candidates/999999/decision", json={"status": "eligible"})
            assert decided.status_code == 404
            other = {"Authorization": f"Bearer {oauth_token(new_keys('k1'))}"}
            assert client.get("/candidates", headers=other).status_code == 401
    assert jwks_host.hits == 1
