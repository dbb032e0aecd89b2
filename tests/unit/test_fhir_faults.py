"""Faults a real server cannot produce on demand, simulated with respx."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from service.errors import FhirServerError, FhirUnavailableError
from service.fhir.auth import SmartBackendAuth
from service.fhir.client import FhirClient, RetryPolicy

BASE = "https://ehr.example/fhir"


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def client(sleeps: Sleeps, **kwargs: Any) -> FhirClient:
    return FhirClient(BASE, retry=RetryPolicy(attempts=4, base_delay=0.1), sleep=sleeps, **kwargs)


def bundle(*ids: str, next_url: str | None = None) -> dict[str, Any]:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [{"resource": {"resourceType": "Patient", "id": i}} for i in ids],
    }


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@respx.mock
def test_429_honours_retry_after() -> None:
    sleeps = Sleeps()
    route = respx.get(f"{BASE}/Patient").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "7"}),
            httpx.Response(200, json=bundle("a")),
        ]
    )

    async def go() -> dict[str, Any]:
        async with client(sleeps) as c:
            return await c.get("Patient")

    assert run(go())["entry"][0]["resource"]["id"] == "a"
    assert sleeps.calls == [7.0] and route.call_count == 2


@respx.mock
def test_503_then_success_with_jittered_backoff() -> None:
    sleeps = Sleeps()
    respx.get(f"{BASE}/Patient").mock(
        side_effect=[httpx.Response(503), httpx.Response(502), httpx.Response(200, json=bundle())]
    )

    async def go() -> FhirClient:
        async with client(sleeps) as c:
            await c.get("Patient")
            return c

    c = run(go())
    assert len(sleeps.calls) == 2 and 0 <= sleeps.calls[0] <= 0.1 and 0 <= sleeps.calls[1] <= 0.2
    assert c.stats.requests == 3 and c.stats.retries == 2


@respx.mock
def test_timeouts_are_retried_then_give_up() -> None:
    sleeps = Sleeps()
    respx.get(f"{BASE}/Patient").mock(side_effect=httpx.ReadTimeout("slow"))

    async def go() -> None:
        async with client(sleeps) as c:
            await c.get("Patient")

    with pytest.raises(FhirUnavailableError, match="after 4 attempts: ReadTimeout"):
        run(go())


@respx.mock
def test_truncated_json_is_retried() -> None:
    sleeps = Sleeps()
    respx.get(f"{BASE}/Patient").mock(
        side_effect=[
            httpx.Response(200, content=b'{"resourceType": "Bundle", "entr'),
            httpx.Response(200, json=bundle("b")),
        ]
    )

    async def go() -> dict[str, Any]:
        async with client(sleeps) as c:
            return await c.get("Patient")

    assert run(go())["entry"][0]["resource"]["id"] == "b"


@respx.mock
def test_operation_outcome_diagnostics_are_kept_apart_from_the_message() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad code system"}],
    }
    respx.get(f"{BASE}/Condition").mock(return_value=httpx.Response(400, json=outcome))

    async def go() -> None:
        async with client(Sleeps()) as c:
            await c.get("Condition", [("patient", "Patient/secret-id")])

    with pytest.raises(FhirServerError) as caught:
        run(go())
    # Diagnostics can quote patient data: readable on the error, never in its message.
    assert caught.value.status == 400 and caught.value.diagnostics == "bad code system"
    assert "bad code system" not in str(caught.value)
    assert "secret-id" not in str(caught.value)


@respx.mock
def test_paging_follows_relative_and_absolute_links() -> None:
    respx.get(f"{BASE}/Patient", params={"_count": "1"}).mock(
        return_value=httpx.Response(200, json=bundle("a", next_url="Patient?page=2"))
    )
    respx.get(f"{BASE}/Patient", params={"page": "2"}).mock(
        return_value=httpx.Response(200, json=bundle("b", next_url=f"{BASE}/Patient?page=3"))
    )
    respx.get(f"{BASE}/Patient", params={"page": "3"}).mock(
        return_value=httpx.Response(200, json=bundle("c"))
    )

    async def go() -> list[str]:
        async with client(Sleeps()) as c:
            return [r["id"] async for r in c.search("Patient", [("_count", "1")])]

    assert run(go()) == ["a", "b", "c"]


@respx.mock
def test_a_next_link_that_loops_is_stopped() -> None:
    respx.get(f"{BASE}/Patient", params={"_count": "1"}).mock(
        return_value=httpx.Response(200, json=bundle("a", next_url="Patient?page=2"))
    )
    respx.get(f"{BASE}/Patient", params={"page": "2"}).mock(
        return_value=httpx.Response(200, json=bundle("b", next_url="Patient?page=2"))
    )

    async def go() -> list[str]:
        async with client(Sleeps()) as c:
            return [r["id"] async for r in c.search("Patient", [("_count", "1")])]

    with pytest.raises(FhirServerError, match="loop"):
        run(go())


@respx.mock
def test_a_next_link_to_another_host_is_refused() -> None:
    respx.get(f"{BASE}/Patient").mock(
        return_value=httpx.Response(200, json=bundle("a", next_url="https://evil.example/steal"))
    )

    async def go() -> list[str]:
        async with client(Sleeps()) as c:
            return [r["id"] async for r in c.search("Patient", [])]

    with pytest.raises(FhirServerError, match="another origin"):
        run(go())


@pytest.fixture(scope="module")
def private_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@respx.mock
def test_smart_token_is_cached_refreshed_on_expiry_and_after_401(private_pem: bytes) -> None:
    now = [1_000_000.0]
    tokens = iter(["t1", "t2", "t3"])
    token_route = respx.post("https://auth.example/token").mock(
        side_effect=lambda request: httpx.Response(
            200, json={"access_token": next(tokens), "expires_in": 300, "token_type": "bearer"}
        )
    )
    seen: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        if request.headers["Authorization"] == "Bearer t2" and seen.count("Bearer t2") == 1:
            return httpx.Response(401)  # revoked early
        return httpx.Response(200, json=bundle())

    respx.get(f"{BASE}/Patient").mock(side_effect=api)
    auth = SmartBackendAuth(
        client_id="prescreen",
        private_key_pem=private_pem,
        kid="k1",
        token_url="https://auth.example/token",
        clock=lambda: now[0],
    )

    async def go() -> None:
        async with client(Sleeps(), auth=auth) as c:
            await c.get("Patient")
            await c.get("Patient")  # cached token
            now[0] += 400  # expired
            await c.get("Patient")  # fetches t2, which the server refuses: t3

    run(go())
    assert seen == ["Bearer t1", "Bearer t1", "Bearer t2", "Bearer t3"]
    assert token_route.call_count == 3
    form = dict(httpx.QueryParams(token_route.calls[0].request.content.decode()))
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    import jwt

    header = jwt.get_unverified_header(form["client_assertion"])
    claims = jwt.decode(form["client_assertion"], options={"verify_signature": False})
    assert header == {"alg": "RS384", "kid": "k1", "typ": "JWT"}
    assert (
        claims["iss"] == claims["sub"] == "prescreen"
        and claims["aud"] == "https://auth.example/token"
    )
