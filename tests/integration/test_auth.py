"""Authentication against a real server that enforces it, with a real SMART token endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from service.cli import main
from service.fhir.auth import BearerAuth
from service.settings import get_settings
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
    yield server
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
