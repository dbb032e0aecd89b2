"""Who may call what: API keys with scopes, OAuth2 bearer JWTs, and CDS Hooks JWTs.

Every endpoint but /healthz, /readyz and /metrics needs credentials. With no API key and no
OAuth2 issuer configured, nothing is let in: the safe default for a service that sees PHI.

Signing keys (JWKS) are fetched asynchronously, with a short overall timeout, and cached, failed
fetches included: a key server that accepts and never answers delays only the requests that need
its keys, never the event loop. The routes check credentials synchronously, so the
:class:`JwksWarmup` middleware fetches the keys a bearer token needs before the route runs;
:meth:`Authenticator.principal` then only reads the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import orjson
from fastapi import HTTPException, Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.settings import Settings

# Asymmetric algorithms only: CDS Hooks forbids shared-secret (HMAC) signatures, and a JWKS
# holds public keys.
JWT_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512"]
# CDS Hooks 2.0 recommends that the EHR's JWT live no longer than five minutes; a longer-lived
# one would widen the replay window the jti store has to cover.
CDS_MAX_TOKEN_SECONDS = 300
# Clock difference tolerated between the token issuer and this host.
LEEWAY_SECONDS = 60
# A JWK Set is a few kilobytes; anything far larger is not one (and must not fill memory).
MAX_JWKS_BYTES = 1_000_000


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]


class SigningKeyError(jwt.InvalidTokenError):
    """No key to verify the token with: the key server failed, or has no key with that kid."""


@dataclass
class _KeySet:
    keys: list[dict[str, Any]] = field(default_factory=list)
    loaded_at: float | None = None  # when the keys were last fetched successfully
    attempted_at: float | None = None  # when a fetch was last tried, successful or not


class JwksCache:
    """JWK Sets by URL: fetched asynchronously, kept ``ttl`` seconds, fetched again at most once
    per ``refresh_interval`` (after a failure, or for a ``kid`` the set does not hold).

    While the key server cannot be reached, keys fetched earlier stay usable: a rotated-out key
    only disappears once a fetch succeeds. Concurrent callers share one fetch per URL.
    """

    def __init__(
        self,
        *,
        timeout: float,
        ttl: float,
        refresh_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.ttl = ttl
        self.refresh_interval = refresh_interval
        self.fetches = 0  # how many fetches were started (for tests and diagnostics)
        self._clock = clock
        self._sets: dict[str, _KeySet] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def cached(self, url: str, kid: str | None) -> dict[str, Any] | None:
        """The key for ``kid`` if it is in the cache; never fetches."""
        entry = self._sets.get(url)
        return _find(entry.keys, kid) if entry else None

    async def key(self, url: str, kid: str | None) -> dict[str, Any]:
        """The key for ``kid``, fetching the set if it is not cached, stale, or lacks the kid
        (each at most once per refresh interval). Raises SigningKeyError."""
        found = self._fresh(url, kid)
        if found is not None:
            return found
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            # Another caller may have fetched the set while this one waited for the lock.
            found = self._fresh(url, kid)
            if found is not None:
                return found
            entry = self._sets.setdefault(url, _KeySet())
            last = entry.attempted_at
            if last is None or self._clock() - last >= self.refresh_interval:
                await self._refresh(url, entry)
            found = _find(entry.keys, kid)
            if found is None:
                raise SigningKeyError(
                    "no signing key with that kid"
                    if entry.loaded_at is not None
                    else "the signing keys could not be fetched"
                )
            return found

    def _fresh(self, url: str, kid: str | None) -> dict[str, Any] | None:
        entry = self._sets.get(url)
        if entry is None or entry.loaded_at is None:
            return None
        if self._clock() - entry.loaded_at >= self.ttl:
            return None
        return _find(entry.keys, kid)

    async def _refresh(self, url: str, entry: _KeySet) -> None:
        self.fetches += 1
        entry.attempted_at = self._clock()
        try:
            async with asyncio.timeout(self.timeout):
                keys = await _download(url, self.timeout)
        except (TimeoutError, httpx.HTTPError, ValueError):
            return  # a failure: the attempt time makes callers wait for the next interval
        entry.keys, entry.loaded_at = keys, self._clock()


async def _download(url: str, timeout: float) -> list[dict[str, Any]]:
    async with (
        httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client,
        client.stream("GET", url, headers={"Accept": "application/json"}) as response,
    ):
        response.raise_for_status()
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError("the JWKS is too large")
    document = orjson.loads(bytes(body))
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set")
    return [k for k in document["keys"] if isinstance(k, dict)]


def _find(keys: list[dict[str, Any]], kid: str | None) -> dict[str, Any] | None:
    """The key with this kid; without a kid (allowed for OAuth2 tokens), the set's first key."""
    for key in keys:
        if kid is None or key.get("kid") == kid:
            return key
    return None


def _bearer(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, before any signature check: only to choose the issuer and the key."""
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    return header, claims


def _kid(header: Mapping[str, Any]) -> str | None:
    kid = header.get("kid")
    return kid if isinstance(kid, str) and kid else None


def _verification_key(jwk: dict[str, Any]) -> Any:
    try:
        return jwt.PyJWK(jwk).key
    except jwt.PyJWTError as exc:
        raise SigningKeyError("the signing key cannot be used") from exc


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        raw = orjson.loads(settings.api_keys or "{}")
        self._keys = [
            (name, hashlib.sha256(str(entry["key"]).encode()).digest(), frozenset(entry["scopes"]))
            for name, entry in raw.items()
        ]
        self.settings = settings
        self.jwks = JwksCache(
            timeout=settings.jwks_timeout_seconds,
            ttl=settings.jwks_cache_seconds,
            refresh_interval=settings.jwks_refresh_seconds,
        )
        self.cds_issuers: dict[str, str] = orjson.loads(settings.cds_issuers or "{}")

    async def prepare(self, headers: Mapping[str, str]) -> None:
        """Fetch the OAuth2 signing key a bearer token names, so that the synchronous checks
        find it cached. Never raises: an unusable token is refused later, by ``principal``."""
        url = self.settings.oauth_jwks_url
        token = _bearer(headers)
        if not url or not token or headers.get("x-api-key"):
            return
        try:
            header, claims = _unverified(token)
        except jwt.PyJWTError:
            return  # not a JWT at all: nothing to fetch for it
        issuer = claims.get("iss")
        expected = self.settings.oauth_issuer
        if not isinstance(issuer, str) and issuer is not None:
            return  # not a valid iss: the token will be refused
        if (expected and issuer != expected) or (not expected and issuer in self.cds_issuers):
            return  # another issuer's token (an EHR's CDS Hooks JWT is checked by its route)
        try:
            await self.jwks.key(url, _kid(header))
        except SigningKeyError:
            return

    async def authenticate(self, request: Request) -> Principal:
        """``principal`` with the signing keys fetched first (for callers that can await)."""
        await self.prepare(request.headers)
        return self.principal(request)

    def principal(self, request: Request) -> Principal:
        presented = request.headers.get("x-api-key")
        if presented:
            digest = hashlib.sha256(presented.encode()).digest()
            for name, expected, scopes in self._keys:
                if hmac.compare_digest(digest, expected):
                    return Principal(name, scopes)
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        token = _bearer(request.headers)
        url = self.settings.oauth_jwks_url
        if token is not None and url:
            try:
                header, _claims = _unverified(token)
                jwk = self.jwks.cached(url, _kid(header))
                if jwk is None:
                    raise SigningKeyError("no signing key for this token")
                claims = jwt.decode(
                    token,
                    _verification_key(jwk),
                    algorithms=JWT_ALGORITHMS,
                    audience=self.settings.oauth_audience,
                    issuer=self.settings.oauth_issuer,
                    options={"require": ["exp", "iss", "aud"]},
                )
                _check_lifetime(claims, self.settings.oauth_max_token_seconds)
            except jwt.PyJWTError as exc:
                raise HTTPException(
                    401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
                ) from exc
            scopes = claims.get("scope", claims.get("scp", ""))
            scope_set = frozenset(scopes.split() if isinstance(scopes, str) else scopes)
            return Principal(str(claims.get("sub", "oauth")), scope_set)
        raise HTTPException(401, "credentials required", headers={"WWW-Authenticate": "Bearer"})

    def require(self, request: Request, scope: str) -> Principal:
        principal = self.principal(request)
        if scope not in principal.scopes:
            raise HTTPException(403, f"scope '{scope}' required")
        return principal

    async def verify_cds_jwt(self, request: Request, audiences: list[str]) -> dict[str, Any]:
        """CDS Hooks: the EHR signs a JWT with a key from its JWKS (header ``kid``; claims iss,
        aud = the endpoint called, exp, iat, jti; at most five minutes between iat and exp).
        Only issuers configured in PRESCREEN_CDS_ISSUERS are trusted. The caller remembers the
        jti: that needs the database."""
        token = _bearer(request.headers)
        if token is None:
            raise HTTPException(
                401, "CDS Hooks requests carry a bearer JWT", headers={"WWW-Authenticate": "Bearer"}
            )
        try:
            header, unverified = _unverified(token)
            kid = _kid(header)
            if kid is None:
                raise jwt.InvalidTokenError("the JWT header has no kid")
            issuer = unverified.get("iss")
            jwks_url = self.cds_issuers.get(issuer) if isinstance(issuer, str) else None
            if jwks_url is None:
                raise jwt.InvalidIssuerError("issuer not trusted")
            jwk = await self.jwks.key(jwks_url, kid)
            claims = dict(
                jwt.decode(
                    token,
                    _verification_key(jwk),
                    algorithms=JWT_ALGORITHMS,
                    audience=audiences,
                    issuer=issuer,
                    options={"require": ["exp", "iat", "iss", "aud", "jti"]},
                )
            )
            _check_cds_claims(claims)
        except jwt.PyJWTError as exc:
            raise HTTPException(
                401, f"invalid CDS Hooks JWT: {exc}", headers={"WWW-Authenticate": "Bearer"}
            ) from exc
        return claims


def _check_lifetime(claims: Mapping[str, Any], longest: float) -> None:
    """A bearer token may live ``longest`` seconds at most: counted from now to its exp, and
    from its iat (when it has one) to its exp. A token valid for years is a stolen key's
    dream."""
    try:
        expires = float(claims["exp"])
        issued = float(claims["iat"]) if "iat" in claims else None
    except (TypeError, ValueError) as exc:
        raise jwt.InvalidTokenError("exp and iat must be numbers") from exc
    ahead = expires - time.time()
    if ahead > longest + LEEWAY_SECONDS or (issued is not None and expires - issued > longest):
        raise jwt.InvalidTokenError(f"the token lives longer than {longest:.0f} s")


def _check_cds_claims(claims: Mapping[str, Any]) -> None:
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise jwt.InvalidTokenError("jti must be a non-empty string")
    try:
        lifetime = float(claims["exp"]) - float(claims["iat"])
    except (TypeError, ValueError) as exc:
        raise jwt.InvalidTokenError("exp and iat must be numbers") from exc
    if lifetime > CDS_MAX_TOKEN_SECONDS:
        raise jwt.InvalidTokenError(
            f"the token lives {lifetime:.0f} s; at most {CDS_MAX_TOKEN_SECONDS} s are accepted"
        )


class JwksWarmup:
    """ASGI middleware: before a request reaches the routes, fetch (asynchronously) the signing
    key its bearer token needs, so the routes' synchronous credential checks never do I/O."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            auth = getattr(scope["app"].state, "auth", None)  # set once the service has started
            if isinstance(auth, Authenticator):
                await auth.prepare(Headers(scope=scope))
        await self.app(scope, receive, send)
