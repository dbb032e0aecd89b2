"""Authentication against a real server that enforces it, with a real SMART token endpoint."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from service.catalog import load_trial
from service.cli import main
from service.fhir.auth import BearerAuth, SmartBackendAuth
from service.fhir.connect import WRITE_PERMISSIONS, connect, default_scope
from service.settings import Settings, get_settings
from tests.integration.conftest import LoadedPatients
from tests.integration.servers import SekmetServer

pytestmark = pytest.mark.integration
STATIC_TOKEN = "static-test-token"


def jwk(public_key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS384" else jwt.algorithms.ECAlgorithm
    key: dict[str, Any] = json.loads(algorithm.to_jwk(public_key))
    return {**key, "kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    folder = tmp_path_factory.mktemp("keys")
    made = {}
    for alg, private in (
        ("RS384", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ES384", ec.generate_private_key(ec.SECP384R1())),
    ):
        path = folder / f"{alg}.pem"
        path.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        made[alg] = (path, jwk(private.public_key(), f"kid-{alg}", alg))
    return made


@pytest.fixture(scope="module")
def secured(
    keys: dict[str, tuple[Path, dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SekmetServer]:
    server = SekmetServer(
        tmp_path_factory.mktemp("secured"),
        server_auth={
            "types": ["smart", "basic", "bearer"],
            "users": {"coordinator": "s3cret"},
            "tokens": [STATIC_TOKEN],
            # One client per key: sekmet 0.1.1 tries every key of a client and fails with a 500
            # when an EC assertion meets an RSA key, instead of choosing the key by kid.
            "smart_clients": [
                {"client_id": f"prescreen-{alg}", "scopes": "system/*.*", "jwks": {"keys": [k]}}
                for alg, (_path, k) in keys.items()
            ],
        },
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def loaded(secured: SekmetServer) -> LoadedPatients:
    return LoadedPatients(secured.base_url, "auth", auth=BearerAuth(STATIC_TOKEN))


def run_with(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    secured: SekmetServer,
    loaded: LoadedPatients,
    out: Path,
    *extra: str,
) -> int:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        candidate = next(pid for pid, t in loaded.tests.items() if t.id == "candidate")
        return main(
            [
                "screen",
                "--trial",
                "relieve",
                "--fhir-url",
                secured.base_url,
                "--as-of",
                "2026-06-15",
                "--out",
                str(out),
                "--no-progress",
                "--patients",
                candidate,
                *extra,
            ]
        )
    finally:
        get_settings.cache_clear()


def test_the_server_really_refuses_anonymous_requests(secured: SekmetServer) -> None:
    assert httpx.get(f"{secured.base_url}/Patient").status_code == 401


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_smart_backend_services(
    alg: str,
    keys: dict[str, tuple[Path, dict[str, Any]]],
    secured: SekmetServer,
    loaded: LoadedPatients,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    path, _jwk = keys[alg]
    env = {
        "PRESCREEN_FHIR_AUTH": "smart",
        "PRESCREEN_SMART_CLIENT_ID": f"prescreen-{alg}",
        "PRESCREEN_SMART_PRIVATE_KEY": str(path),
        "PRESCREEN_SMART_KID": f"kid-{alg}",
        "PRESCREEN_SMART_ALGORITHM": alg,
    }
    assert run_with(env, monkeypatch, secured, loaded, tmp_path) == 0
    (verdict,) = [json.loads(x) for x in (tmp_path / "verdicts.ndjson").read_text().splitlines()]
    assert verdict["verdict"] == "candidate"


def test_smart_v2_scopes_are_derived_from_the_mapping_and_honoured(
    keys: dict[str, tuple[Path, dict[str, Any]]],
    secured: SekmetServer,
    loaded: LoadedPatients,
) -> None:
    """The server declares permission-v2 and enforces scopes on every request: prescreen asks
    for v2 scopes named after the mapping's resource types (no wildcard) and reads with them."""
    smart = httpx.get(f"{secured.base_url}/.well-known/smart-configuration").json()
    assert "permission-v2" in smart["capabilities"]
    ruleset = load_trial("relieve", Settings())
    path, _jwk = keys["RS384"]
    settings = Settings(
        fhir_auth="smart",
        smart_client_id="prescreen-RS384",
        smart_private_key=path,
        smart_kid="kid-RS384",
        smart_algorithm="RS384",
    )
    candidate = next(pid for pid, t in loaded.tests.items() if t.id == "candidate")

    async def search_conditions() -> tuple[str, int]:
        client = await connect(settings, secured.base_url, ruleset.mapper.resource_types)
        async with client:
            found = [r async for r in client.search("Condition", [("patient", candidate)])]
            assert isinstance(client.auth, SmartBackendAuth)
            return client.auth.scope, len(found)

    requested, found = asyncio.run(search_conditions())
    scopes = requested.split()
    assert "system/Patient.rs" in scopes and "system/Condition.rs" in scopes
    # A read-only run asks for no write scope (a server may refuse a token asking for more).
    assert not any(scope.startswith("system/Research") for scope in scopes)
    assert not any("*" in scope for scope in scopes)
    assert found > 0


def test_smart_v1_scopes_when_the_server_lacks_permission_v2() -> None:
    assert default_scope(["Condition"], v2=False).split() == [
        "system/Condition.read",
        "system/Patient.read",
    ]
    written = default_scope(["Observation"], v2=False, writes=WRITE_PERMISSIONS).split()
    assert "system/Observation.read" in written and "system/Observation.write" in written
    assert "system/Provenance.write" in written and "system/Provenance.read" not in written


def test_wrong_key_is_refused_by_the_token_endpoint(
    secured: SekmetServer,
    loaded: LoadedPatients,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "stranger.pem"
    path.write_bytes(
        stranger.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    env = {
        "PRESCREEN_FHIR_AUTH": "smart",
        "PRESCREEN_SMART_CLIENT_ID": "prescreen-RS384",
        "PRESCREEN_SMART_PRIVATE_KEY": str(path),
        "PRESCREEN_SMART_KID": "kid-RS384",
        "PRESCREEN_SMART_ALGORITHM": "RS384",
    }
    assert run_with(env, monkeypatch, secured, loaded, tmp_path / "out") == 2
    assert "SMART token request failed with HTTP 401" in capsys.readouterr().err


def test_basic_and_static_bearer(
    secured: SekmetServer, loaded: LoadedPatients, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    basic = {
        "PRESCREEN_FHIR_AUTH": "basic",
        "PRESCREEN_FHIR_USERNAME": "coordinator",
        "PRESCREEN_FHIR_PASSWORD": "s3cret",
    }
    assert run_with(basic, monkeypatch, secured, loaded, tmp_path / "basic") == 0
    bearer = {"PRESCREEN_FHIR_AUTH": "bearer", "PRESCREEN_FHIR_TOKEN": STATIC_TOKEN}
    assert run_with(bearer, monkeypatch, secured, loaded, tmp_path / "bearer") == 0
    wrong = {"PRESCREEN_FHIR_AUTH": "bearer", "PRESCREEN_FHIR_TOKEN": "nope"}
    assert run_with(wrong, monkeypatch, secured, loaded, tmp_path / "wrong") == 2
