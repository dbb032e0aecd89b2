"""Authentication to the FHIR server: none, static bearer, basic, SMART Backend Services.

SMART Backend Services (client credentials with a ``private_key_jwt`` assertion, RS384 or ES384,
with ``kid``) is an ``httpx.Auth`` flow: it fetches a token before the first request, reuses it
until shortly before it expires, and fetches a new one once if the server answers 401.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
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
        self.granted_scope = ""

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
        # What the server granted, which may be less than asked (logged by nobody: no PHI, but
        # tests and diagnostics read it).
        self.granted_scope = str(body.get("scope", self.scope))
        self._expires_at = self._clock() + float(body.get("expires_in", 300))
        self.tokens_fetched += 1

    def _valid(self) -> bool:
        return self._token is not None and self._clock() < self._expires_at - EXPIRY_MARGIN_SECONDS

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if not self._valid():
            yield from self._fresh_token()
        request.headers["Authorization"] = f"Bearer {self._token}"
        response = yield request
        if response.status_code == 401:
            # Revoked or expired early: one fresh token, one more try.
            yield from self._fresh_token()
            request.headers["Authorization"] = f"Bearer {self._token}"
            yield request

    def _fresh_token(self) -> Generator[httpx.Request, httpx.Response, None]:
        """A token; a server that refuses scopes it names (``invalid_scope``: a resource type
        it does not have) is asked again without them. What it then grants says which types
        the run may read (the others are lost sources, see ``scope_reads``)."""
        for _ in range(len(self.scope.split()) + 1):
            response = yield self._token_request()
            narrowed = self._without_refused(response)
            if narrowed is None:
                break
            self.scope = narrowed
        self._store(response)

    def _without_refused(self, response: httpx.Response) -> str | None:
        """The scope without what an ``invalid_scope`` refusal names; None if it names none
        (or all)."""
        if response.status_code != 400:
            return None
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(body, dict) or body.get("error") != "invalid_scope":
            return None
        text = str(body.get("error_description") or "")
        kept = []
        for scope in self.scope.split():
            match = _SCOPE.fullmatch(scope)
            named = scope in text or (
                match is not None
                and match.group(2) != "*"
                and re.search(rf"\b{re.escape(match.group(2))}\b", text) is not None
            )
            if not named:
                kept.append(scope)
        if not kept or len(kept) == len(self.scope.split()):
            return None
        return " ".join(kept)


_SCOPE = re.compile(r"(system|user|patient|\*)/(\*|[A-Za-z]+)\.([A-Za-z*]+)(\?.*)?")


def scope_reads(granted: str, resource_type: str) -> bool:
    """Whether granted SMART scopes (v1 ``system/X.read``, v2 ``system/X.rs``) let a backend
    service read every resource of this type. A scope narrowed by a query (``?category=...``)
    covers only part of them: not enough to decide by their absence."""
    for scope in granted.split():
        match = _SCOPE.fullmatch(scope)
        if match is None:
            continue
        level, rtype, permissions, query = match.groups()
        if level not in ("system", "*") or rtype not in ("*", resource_type) or query:
            continue
        if permissions in ("read", "*") or (
            re.fullmatch(r"c?r?u?d?s?", permissions) and ("r" in permissions or "s" in permissions)
        ):
            return True
    return False


def _oauth_error(body: bytes) -> str:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(parsed, dict):
        return " ".join(str(parsed.get(k, "")) for k in ("error", "error_description")).strip()
    return ""


@dataclass(frozen=True)
class SmartConfiguration:
    """What ``[base]/.well-known/smart-configuration`` says (SMART App Launch 2)."""

    token_endpoint: str | None
    capabilities: frozenset[str]

    @property
    def scopes_v2(self) -> bool:
        """SMART v2 scope syntax (``system/Patient.rs``) is understood by the server."""
        return "permission-v2" in self.capabilities


async def discover_smart(base_url: str, timeout: float = 30.0) -> SmartConfiguration:
    """The server's SMART configuration; an absent or unreadable one says nothing (v1, no
    endpoint), which is what a server that predates SMART 2 amounts to."""
    url = base_url.rstrip("/") + "/.well-known/smart-configuration"
    try:
        async with httpx.AsyncClient(timeout=timeout) as http:
            response = await http.get(url, headers={"Accept": "application/json"})
        body = orjson.loads(response.content) if response.status_code == 200 else {}
    except (httpx.HTTPError, orjson.JSONDecodeError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    endpoint = body.get("token_endpoint")
    capabilities = body.get("capabilities")
    return SmartConfiguration(
        endpoint if isinstance(endpoint, str) else None,
        frozenset(c for c in capabilities if isinstance(c, str))
        if isinstance(capabilities, list)
        else frozenset(),
    )


async def discover_token_url(base_url: str, timeout: float = 30.0) -> str:
    """The token endpoint from ``[base]/.well-known/smart-configuration``."""
    configuration = await discover_smart(base_url, timeout)
    if configuration.token_endpoint is None:
        raise FhirServerError("the server's SMART configuration names no token_endpoint")
    return configuration.token_endpoint


def basic_auth(username: str | None, password: str | None) -> httpx.Auth:
    if not username or password is None:
        raise ConfigError("basic auth needs PRESCREEN_FHIR_USERNAME and PRESCREEN_FHIR_PASSWORD")
    return httpx.BasicAuth(username, password)


def bearer_auth(token: str | None) -> httpx.Auth:
    if not token:
        raise ConfigError("bearer auth needs PRESCREEN_FHIR_TOKEN")
    return BearerAuth(token)
