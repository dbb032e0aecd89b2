"""The first thing every HTTP request meets: credentials before any body, a byte limit on what
is actually received, and no NUL character in a path or query.

Why an ASGI middleware rather than FastAPI dependencies: FastAPI reads and validates a request
body before it resolves dependencies, so an unauthenticated caller could make the service buffer
a large body, or answer 422 with parts of its input. Here, a request to an endpoint that needs
credentials is authenticated from its headers before the body is touched, and a body is counted
as it streams in: ``Content-Length`` may be absent (chunked) or a lie.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Paths any caller may reach without credentials, or that authenticate people themselves
# (the web worklist signs people in with a session cookie and protects its forms with CSRF).
PUBLIC_PREFIXES = ("/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json", "/ui")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

Authenticate = Callable[[Request], Any]


class BodyTooLargeError(Exception):
    """More bytes arrived than the limit allows."""


class RequestGuard:
    """Authenticates before the body is read, and enforces ``max_body_bytes`` on received bytes.

    ``authenticate(request)`` raises an HTTPException (401/403) for a request that may not come
    in; it may be sync or async. It is chosen per request by ``authenticator_for``, which returns
    None for paths that need no credentials.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        authenticator_for: Callable[[Request], Authenticate | None],
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.authenticator_for = authenticator_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _has_nul(scope):
            # No id, name or filter holds one; PostgreSQL refuses them in text (a 500 before).
            await _answer(send, 400, "the request's path or query holds a NUL character")
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _answer(send, 413, "request body too large")
            return
        if scope["method"] in BODY_METHODS:
            request = Request(scope)
            authenticate = self.authenticator_for(request)
            if authenticate is not None:
                try:
                    outcome = authenticate(request)
                    if inspect.isawaitable(outcome):
                        await outcome
                except HTTPException as refused:
                    await _answer(send, refused.status_code, str(refused.detail), refused.headers)
                    return
        received = 0
        started = answered = False

        async def counted_receive() -> Message:
            nonlocal received, answered
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # Answer now: the framework may turn the exception below into its own
                    # error (FastAPI says 400 for any failure while reading a body).
                    if not started and not answered:
                        answered = True
                        await _answer(send, 413, "request body too large")
                    raise BodyTooLargeError
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if answered:
                return  # the 413 went out already
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with contextlib.suppress(BodyTooLargeError):
            await self.app(scope, counted_receive, tracked_send)


def _has_nul(scope: Scope) -> bool:
    query = scope.get("query_string", b"")
    return "\x00" in scope.get("path", "") or b"\x00" in query or b"%00" in query


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() and len(text) < 19 else 2**63
    return None


async def _answer(
    send: Send, status: int, detail: str, headers: Mapping[str, str] | None = None
) -> None:
    body = orjson.dumps({"detail": detail})
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def is_public(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PUBLIC_PREFIXES)
