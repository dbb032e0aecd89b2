"""Who may call what: API keys with scopes, OAuth2 bearer JWTs, and CDS Hooks JWTs.

Every endpoint but /healthz, /readyz and /metrics needs credentials. With no API key and no
OAuth2 issuer configured, nothing is let in: the safe default for a service that sees PHI.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import orjson
from fastapi import HTTPException, Request

from service.settings import Settings

JWT_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512"]
JWKS_TTL_SECONDS = 300.0


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]


@dataclass
class JwksCache:
    keys: dict[str, tuple[float, list[dict[str, Any]]]] = field(default_factory=dict)

    def get(self, url: str) -> list[dict[str, Any]]:
        cached = self.keys.get(url)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        response = httpx.get(url, timeout=10)
        response.raise_for_status()
        keys = list(response.json().get("keys", []))
        self.keys[url] = (time.monotonic() + JWKS_TTL_SECONDS, keys)
        return keys


def _key_for(token: str, jwks: list[dict[str, Any]]) -> Any:
    header = jwt.get_unverified_header(token)
    candidates = [k for k in jwks if not header.get("kid") or k.get("kid") == header.get("kid")]
    if not candidates:
        raise jwt.InvalidTokenError("no key with that kid")
    return jwt.PyJWK(candidates[0]).key


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        raw = orjson.loads(settings.api_keys or "{}")
        self._keys = [
            (name, hashlib.sha256(str(entry["key"]).encode()).digest(), frozenset(entry["scopes"]))
            for name, entry in raw.items()
        ]
        self.settings = settings
        self.jwks = JwksCache()
        self.cds_issuers: dict[str, str] = orjson.loads(settings.cds_issuers or "{}")

    def principal(self, request: Request) -> Principal:
        presented = request.headers.get("x-api-key")
        if presented:
            digest = hashlib.sha256(presented.encode()).digest()
            for name, expected, scopes in self._keys:
                if hmac.compare_digest(digest, expected):
                    return Principal(name, scopes)
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("bearer ") and self.settings.oauth_jwks_url:
            token = authorization[7:].strip()
            try:
                key = _key_for(token, self.jwks.get(self.settings.oauth_jwks_url))
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=JWT_ALGORITHMS,
                    audience=self.settings.oauth_audience,
                    issuer=self.settings.oauth_issuer,
                    options={"require": ["exp", "iss", "aud"]},
                )
            except (jwt.PyJWTError, httpx.HTTPError) as exc:
                raise HTTPException(401, "invalid bearer token") from exc
            scopes = claims.get("scope", claims.get("scp", ""))
            scope_set = frozenset(scopes.split() if isinstance(scopes, str) else scopes)
            return Principal(str(claims.get("sub", "oauth")), scope_set)
        raise HTTPException(401, "credentials required", headers={"WWW-Authenticate": "Bearer"})

    def require(self, request: Request, scope: str) -> Principal:
        principal = self.principal(request)
        if scope not in principal.scopes:
            raise HTTPException(403, f"scope '{scope}' required")
        return principal

    def verify_cds_jwt(self, request: Request, audience: str) -> dict[str, Any]:
        """CDS Hooks: the EHR signs a JWT (iss, aud = this service's URL, exp, jti) with a key
        from its JWKS; only issuers configured in PRESCREEN_CDS_ISSUERS are trusted."""
        authorization = request.headers.get("authorization", "")
        if not authorization.lower().startswith("bearer "):
            raise HTTPException(401, "CDS Hooks requests carry a bearer JWT")
        token = authorization[7:].strip()
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
            jwks_url = self.cds_issuers.get(str(issuer))
            if jwks_url is None:
                raise jwt.InvalidIssuerError("issuer not trusted")
            key = _key_for(token, self.jwks.get(jwks_url))
            return dict(
                jwt.decode(
                    token,
                    key,
                    algorithms=JWT_ALGORITHMS,
                    audience=audience,
                    issuer=issuer,
                    options={"require": ["exp", "iss", "aud", "jti"]},
                )
            )
        except (jwt.PyJWTError, httpx.HTTPError) as exc:
            raise HTTPException(401, "invalid CDS Hooks JWT") from exc
