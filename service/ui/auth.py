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
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from starlette.datastructures import FormData

from service import roles
from service.roles import Access
from service.settings import Settings
from service.state.models import WebUser
from service.state.worklist import WorklistStore

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
    """Someone signed in: their name and what they may do (service.roles)."""

    name: str
    access: Access

    def may_decide(self, trial: str) -> bool:
        return self.access.may_decide(trial)


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
    try:
        access = Access.stored(found.role, found.trials)
    except roles.RoleError:
        return None  # written by a newer version: signing in again sorts it out
    return Person(found.user_name, access)


async def sign_in(
    request: Request, store: WorklistStore, name: str, access: Access, hours: float
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
    request.session[SESSION_ID] = await asyncio.to_thread(store.open_session, name, access, hours)
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
    if isinstance(value, Iterable) and not isinstance(value, (bytes, dict)):
        return [v for v in value if isinstance(v, str)]
    return []


def access_from_claims(claims: dict[str, Any], settings: Settings) -> Access | None:
    """What the roles claim grants (service.roles.from_claim); None when it grants nothing
    here, or when no roles claim is configured."""
    if not settings.oidc_roles_claim:
        return None
    return roles.from_claim(_claim_values(claims.get(settings.oidc_roles_claim)))


@dataclass(frozen=True)
class Identity:
    """An identity-provider account: issuer and subject (OIDC Core: the only pair that is
    unique and stable), and the name its username claim gives (shown, never trusted)."""

    issuer: str
    subject: str
    name: str


def identity_of(claims: dict[str, Any], settings: Settings) -> Identity | None:
    """The account an ID token names; None when ``iss`` or ``sub`` is missing or not text."""
    issuer, subject = claims.get("iss"), claims.get("sub")
    if not (isinstance(issuer, str) and issuer and isinstance(subject, str) and subject):
        return None
    shown = claims.get(settings.oidc_username_claim)
    name = shown if isinstance(shown, str) and shown.strip() else subject
    return Identity(issuer, subject, name.strip()[:128])


@dataclass(frozen=True)
class Refusal:
    """Why an identity-provider account is not signed in, for the log (staff names only, no
    patient data) and whether linking would help."""

    log: str
    unlinked_user: str | None = None


def oidc_person(
    identity: Identity,
    claims: dict[str, Any],
    linked: WebUser | None,
    same_name: WebUser | None,
    settings: Settings,
) -> tuple[str, Access] | Refusal:
    """(name, access) of a person the identity provider signed in, or why not.

    ``linked`` is the person ``prescreen users add/link`` tied to this account: they sign in as
    that person, with that person's roles. Anyone else gets what the roles claim grants, under
    the name their username claim gives, unless that name is a person's of this service
    (``same_name``): a name claim alone never signs anyone in as a local user.
    """
    if linked is not None:
        try:
            return linked.name, Access.stored(linked.role, linked.trials)
        except roles.RoleError:
            return Refusal(f"the user {linked.name} has roles this version does not know")
    if same_name is not None:
        if same_name.oidc_subject is None:
            return Refusal(
                f"the user {same_name.name} is not linked to an identity-provider account",
                unlinked_user=same_name.name,
            )
        return Refusal("the account's username claim names a user linked to another account")
    granted = access_from_claims(claims, settings)
    if granted is None:
        return Refusal("the account is not linked to a user and its roles claim grants nothing")
    return identity.name, granted


def link_command(identity: Identity, user: str = "NAME") -> str:
    """The command an administrator runs to link this account to the user (shell-quoted)."""
    return (
        f"prescreen users link {shlex.quote(user)} --oidc-issuer {shlex.quote(identity.issuer)} "
        f"--oidc-subject {shlex.quote(identity.subject)}"
    )
