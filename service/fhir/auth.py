"""Authentication to the FHIR server: none, static bearer, basic, SMART Backend Services.

SMART Backend Services (client credentials with a ``private_key_jwt`` assertion, RS384 or ES384,
with ``kid``) is an ``httpx.Auth`` flow: it fetches a token before the first request, reuses it
until shortly before it expires, and fetches a new one once if the server answers 401.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Generator
from typing import Literal

import httpx
import jwt
import orjson

from service.errors import ConfigError, FhirServerError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
AuthKind = Literal["none", "bearer", "basic", "smart"]
# Refresh a little before expiry so a token never dies in flight.
EXPIRY_MARGIN_SECONDS = 30.0


class BearerAuth(httpx.Auth):
    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


class SmartBackendAuth(httpx.Auth):
    """SMART Backend Services client-credentials flow with a signed JWT assertion."""

    requires_response_body = True

    def __init__(
        self,
        *,
        client_id: str,
        private_key_pem: bytes,
        kid: str,
        token_url: str,
        algorithm: Literal["RS384", "ES384"] = "RS384",
        scope: str = "system/*.read",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client_id = client_id
        self.token_url = token_url
        self.scope = scope
        self._key = private_key_pem
        self._kid = kid
        self._algorithm = algorithm
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self.tokens_fetched = 0

    def assertion(self) -> str:
        now = self._clock()
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "exp": int(now) + 300,
            "iat": int(now),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm=self._algorithm, headers={"kid": self._kid})

    def _token_request(self) -> httpx.Request:
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(),
        }
        return httpx.Request(
            "POST", self.token_url, data=form, headers={"Accept": "application/json"}
        )

    def _store(self, response: httpx.Response) -> None:
        if response.status_code != 200:
            raise FhirServerError(
                f"SMART token request failed with HTTP {response.status_code}",
                status=response.status_code,
                diagnostics=_oauth_error(response.content),
            )
        body = orjson.loads(response.content)
        self._token = str(body["access_token"])
        self._expires_at = self._clock() + float(body.get("expires_in", 300))
        self.tokens_fetched += 1

    def _valid(self) -> bool:
        return self._token is not None and self._clock() < self._expires_at - EXPIRY_MARGIN_SECONDS

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if not self._valid():
            self._store((yield self._token_request()))
        request.headers["Authorization"] = f"Bearer {self._token}"
        response = yield request
        if response.status_code == 401:
            # Revoked or expired early: one fresh token, one more try.
            self._store((yield self._token_request()))
            request.headers["Authorization"] = f"Bearer {self._token}"
            yield request


def _oauth_error(body: bytes) -> str:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(parsed, dict):
        return " ".join(str(parsed.get(k, "")) for k in ("error", "error_description")).strip()
    return ""


async def discover_token_url(base_url: str, timeout: float = 30.0) -> str:
    """The token endpoint from ``[base]/.well-known/smart-configuration``."""
    url = base_url.rstrip("/") + "/.well-known/smart-configuration"
    async with httpx.AsyncClient(timeout=timeout) as http:
        response = await http.get(url, headers={"Accept": "application/json"})
    if response.status_code != 200:
        raise FhirServerError(
            f"SMART discovery failed with HTTP {response.status_code}", status=response.status_code
        )
    endpoint = orjson.loads(response.content).get("token_endpoint")
    if not isinstance(endpoint, str):
        raise FhirServerError("SMART configuration has no token_endpoint")
    return endpoint


def basic_auth(username: str | None, password: str | None) -> httpx.Auth:
    if not username or password is None:
        raise ConfigError("basic auth needs PRESCREEN_FHIR_USERNAME and PRESCREEN_FHIR_PASSWORD")
    return httpx.BasicAuth(username, password)


def bearer_auth(token: str | None) -> httpx.Auth:
    if not token:
        raise ConfigError("bearer auth needs PRESCREEN_FHIR_TOKEN")
    return BearerAuth(token)
