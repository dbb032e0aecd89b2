"""Who is signed in to the web worklist, and what they may do.

The browser holds a signed cookie (HttpOnly, SameSite=Lax, Secure when the public URL is https)
with a random session id and the CSRF token; the session itself (person, role, trials, expiry)
is a database row found by the id's hash, so signing out ends it everywhere. Every form carries
the CSRF token, and every state-changing request is refused without it.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from starlette.datastructures import FormData

from service.settings import Settings
from service.state.models import WebUser
from service.state.worklist import ROLES, WorklistStore

SESSION_ID, CSRF, NEXT, FLASH = "sid", "csrf", "next", "flash"
DRAFT, LAST_NAME = "draft", "last"
# Kept in the cookie across signing in and out: the key of a decision kept for its author to
# send once signed in again (drafts.py); across signing out (or the sign-in expiring), who was
# signed in and the CSRF token, so that a form sent from a page still open is recognised as
# this browser's own and its author's.
KEPT_ACROSS_SIGN_IN = (DRAFT,)
KEPT_ACROSS_SIGN_OUT = (DRAFT, CSRF, LAST_NAME)


@dataclass(frozen=True)
class Person:
    name: str
    role: str  # coordinator | viewer
    trials: frozenset[str]  # trials a coordinator decides on; empty: every trial

    def may_decide(self, trial: str) -> bool:
        return self.role == "coordinator" and (not self.trials or trial in self.trials)


class NotSignedInError(Exception):
    """Raised by pages for an anonymous browser: the app answers with the sign-in page."""


def csrf_token(request: Request) -> str:
    token = request.session.get(CSRF)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        request.session[CSRF] = token
    return token


async def checked_form(request: Request) -> FormData:
    """The posted form, once its CSRF token (field ``csrf_token`` or header ``X-CSRF-Token``)
    matches the session's; 403 otherwise."""
    form = await request.form()
    presented = form.get("csrf_token") or request.headers.get("x-csrf-token") or ""
    expected = request.session.get(CSRF)
    if (
        not isinstance(expected, str)
        or not isinstance(presented, str)
        or not hmac.compare_digest(presented.encode(), expected.encode())
    ):
        raise HTTPException(403, "The form had no valid security token. Reload the page and retry.")
    return form


def safe_next(target: Any, root: str) -> str:
    """A place to return to after signing in: only a path of this worklist (no open redirect)."""
    if isinstance(target, str) and target.startswith(f"{root}/") and not target.startswith("//"):
        return target
    return f"{root}/"


async def current_person(request: Request, store: WorklistStore) -> Person | None:
    raw = request.session.get(SESSION_ID)
    if not isinstance(raw, str):
        return None
    found = await asyncio.to_thread(store.find_session, raw)
    if found is None:
        request.session.pop(SESSION_ID, None)
        return None
    trials = frozenset(t for t in found.trials.split(",") if t)
    return Person(found.user_name, found.role, trials)


async def sign_in(
    request: Request, store: WorklistStore, name: str, role: str, trials: str, hours: float
) -> str:
    """Open a session; returns where to go next. The session id and CSRF token are new, so
    nothing planted in the browser before signing in carries over."""
    target = request.session.get(NEXT)
    old = request.session.get(SESSION_ID)
    if isinstance(old, str):
        await asyncio.to_thread(store.close_session, old)
    kept = {key: request.session[key] for key in KEPT_ACROSS_SIGN_IN if key in request.session}
    request.session.clear()
    request.session.update(kept)
    request.session[SESSION_ID] = await asyncio.to_thread(
        store.open_session, name, role, trials, hours
    )
    request.session[CSRF] = secrets.token_urlsafe(32)
    request.session[LAST_NAME] = name
    return safe_next(target, request.scope.get("root_path", ""))


async def sign_out(request: Request, store: WorklistStore) -> None:
    raw = request.session.get(SESSION_ID)
    if isinstance(raw, str):
        await asyncio.to_thread(store.close_session, raw)
    kept = {key: request.session[key] for key in KEPT_ACROSS_SIGN_OUT if key in request.session}
    request.session.clear()
    request.session.update(kept)


def _claim_values(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.replace(",", " ").split()
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    return []


def role_from_claims(claims: dict[str, Any], settings: Settings) -> tuple[str, str] | None:
    """(role, trials) from the roles claim: ``coordinator`` (every trial), ``coordinator:<trial>``
    (repeatable) or ``viewer``; None when the claim grants nothing here."""
    if not settings.oidc_roles_claim:
        return None
    values = _claim_values(claims.get(settings.oidc_roles_claim))
    if "coordinator" in values:
        return "coordinator", ""
    scoped = [v.split(":", 1)[1] for v in values if v.startswith("coordinator:")]
    if scoped:
        return "coordinator", ",".join(scoped)
    if "viewer" in values:
        return "viewer", ""
    return None


def oidc_person(
    claims: dict[str, Any], known: WebUser | None, settings: Settings
) -> tuple[str, str, str] | None:
    """(name, role, trials) of a person the identity provider signed in, or None if prescreen
    grants them nothing: a person added with ``prescreen users add`` has that role, anyone else
    the role their roles claim gives."""
    if known is not None and known.role in ROLES:
        return known.name, known.role, known.trials
    granted = role_from_claims(claims, settings)
    if granted is None:
        return None
    return person_name(claims, settings), granted[0], granted[1]


def person_name(claims: dict[str, Any], settings: Settings) -> str:
    return str(claims.get(settings.oidc_username_claim) or claims.get("sub") or "")
