"""Real parts for the service tests: the service under uvicorn, sekmet-fhir, an SMTP server
(aiosmtpd), an HTTP receiver for webhooks, a host serving JWKS, and SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives.asymmetric import rsa

from service.settings import Settings
from service.web import create_app
from tests.conftest import SAMPLE_DIR
from tests.integration.servers import SekmetServer, free_port

API_KEY = "test-integration-key"
NOTIFY_KEY = "test-notify-key"
WEBHOOK_SECRET = "webhook-secret"


@dataclass
class Inbox:
    """What the fake-free receivers got: webhook posts and e-mails."""

    webhooks: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    emails: list[bytes] = field(default_factory=list)


class _Recorder(BaseHTTPRequestHandler):
    inbox: Inbox
    jwks: dict[str, Any]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.inbox.webhooks.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def do_GET(self) -> None:
        payload = json.dumps(self.jwks).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_args: Any) -> None:
        pass


class _Mail:
    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802
        self.inbox.emails.append(envelope.content)
        return "250 OK"


@dataclass
class Keys:
    private: Any
    kid: str = "k1"

    def jwks(self) -> dict[str, Any]:
        key = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        return {"keys": [{**key, "kid": self.kid, "alg": "RS384", "use": "sig"}]}

    def sign(self, claims: dict[str, Any], kid: str | None = None) -> str:
        headers = {"kid": kid or self.kid}
        return jwt.encode(claims, self.private, algorithm="RS384", headers=headers)


@dataclass
class Helpers:
    inbox: Inbox
    receiver_url: str
    smtp_port: int
    keys: Keys


@pytest.fixture(scope="session")
def helpers() -> Iterator[Helpers]:
    inbox = Inbox()
    keys = Keys(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    handler = type("Recorder", (_Recorder,), {"inbox": inbox, "jwks": keys.jwks()})
    http = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    smtp_port = free_port()
    mail = Controller(_Mail(inbox), hostname="127.0.0.1", port=smtp_port)
    mail.start()
    yield Helpers(inbox, f"http://127.0.0.1:{http.server_address[1]}", smtp_port, keys)
    mail.stop()
    http.shutdown()


@pytest.fixture(scope="session")
def sekmet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SekmetServer]:
    server = SekmetServer(tmp_path_factory.mktemp("svc-sekmet")).start()
    try:
        yield server
    finally:
        server.stop()


def _databases() -> list[str]:
    found = ["sqlite"]
    if os.environ.get("PRESCREEN_TEST_POSTGRES_URL"):
        found.append("postgresql")
    return found


@pytest.fixture(params=_databases())
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    import sqlalchemy as sa

    server = os.environ["PRESCREEN_TEST_POSTGRES_URL"]
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield server.rsplit("/", 1)[0] + f"/{name}"
    admin.dispose()


def service_settings(
    sekmet: SekmetServer, helpers: Helpers, database_url: str, port: int, **extra: Any
) -> Settings:
    return Settings(
        fhir_url=sekmet.base_url,
        database_url=database_url,
        public_url=f"http://127.0.0.1:{port}",
        api_keys=json.dumps(
            {
                "engine": {"key": API_KEY, "scopes": ["screen", "runs", "candidates", "decide"]},
                "fhir-server": {"key": NOTIFY_KEY, "scopes": ["notify"]},
                "reader": {"key": "reader-key", "scopes": ["candidates"]},
            }
        ),
        oauth_jwks_url=f"{helpers.receiver_url}/jwks.json",
        oauth_issuer="https://idp.example",
        oauth_audience="prescreen",
        cds_issuers=json.dumps({"https://ehr.example": f"{helpers.receiver_url}/jwks.json"}),
        webhook_url=f"{helpers.receiver_url}/hook",
        webhook_secret=WEBHOOK_SECRET,
        smtp_host="127.0.0.1",
        smtp_port=helpers.smtp_port,
        smtp_to="coordinator@hospital.example",
        debounce_seconds=0.5,
        max_body_bytes=200_000,
        ndjson_roots=str(SAMPLE_DIR.parent),
        **extra,
    )


@dataclass
class RunningService:
    url: str
    settings: Settings
    server: uvicorn.Server

    def client(self, key: str = API_KEY) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": key}, timeout=60)


@contextmanager
def running_service(settings: Settings, port: int) -> Iterator[RunningService]:
    """The app under uvicorn in a thread, stopped on every way out (also when it fails to
    start). A loaded machine can take a while to migrate the database: generous wait."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 180
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the service did not start")
            time.sleep(0.05)
        yield RunningService(f"http://127.0.0.1:{port}", settings, server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def service(sekmet: SekmetServer, helpers: Helpers, database_url: str) -> Iterator[RunningService]:
    port = free_port()
    settings = service_settings(sekmet, helpers, database_url, port)
    with running_service(settings, port) as running:
        yield running


def wait_for(check: Any, seconds: float = 300.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)
