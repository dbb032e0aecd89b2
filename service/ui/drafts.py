"""A decision sent after its author's session had ended (signed out in another tab, or expired)
is not lost: it is kept in the database under a random key that this browser's cookie holds,
shown filled in on the patient page once they have signed in again, and deleted when it is sent
(or after a day). Only the key's hash is stored; the cookie never carries what was typed.

A draft is kept only when the form's CSRF token matches the one this browser's cookie still
holds (signing out and expiry leave it there, with the name of who was signed in), so another
site cannot plant one; it is offered back to that person only, not to a colleague who signs in
next on the same computer.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from typing import Any

from fastapi import Request

from service.state.models import DecisionDraft
from service.state.worklist import WorklistStore, session_id_hash
from service.ui import auth

FIELDS = ("status", "reason", "note", "expected_version")


def token_matches(request: Request, form: Any) -> bool:
    presented = form.get("csrf_token") or request.headers.get("x-csrf-token") or ""
    expected = request.session.get(auth.CSRF)
    return (
        isinstance(expected, str)
        and isinstance(presented, str)
        and hmac.compare_digest(presented.encode(), expected.encode())
    )


def author(request: Request, form: Any) -> str | None:
    """Who sent this form from a page of theirs still open, or None when that cannot be told
    (no sign-in on this browser before, or a CSRF token that is not this browser's)."""
    name = request.session.get(auth.LAST_NAME)
    if isinstance(name, str) and name and token_matches(request, form):
        return name
    return None


async def keep(
    request: Request,
    store: WorklistStore,
    author: str,
    patient_id: str,
    trial: str,
    values: dict[str, str],
) -> None:
    raw = secrets.token_urlsafe(32)
    kept = {k: values[k] for k in FIELDS}
    await asyncio.to_thread(store.save_draft, session_id_hash(raw), author, patient_id, trial, kept)
    request.session[auth.DRAFT] = raw


async def find(
    request: Request, store: WorklistStore, person: str, patient_id: str
) -> DecisionDraft | None:
    """This browser's kept decision, if it is this person's and about this patient."""
    raw = request.session.get(auth.DRAFT)
    if not isinstance(raw, str):
        return None
    draft = await asyncio.to_thread(store.draft, session_id_hash(raw))
    if draft is None:
        request.session.pop(auth.DRAFT, None)
        return None
    return draft if draft.author == person and draft.patient_id == patient_id else None


async def drop(
    request: Request, store: WorklistStore, person: str, patient_id: str, trial: str
) -> None:
    """Forget the kept decision once one for the same patient and trial has been recorded."""
    draft = await find(request, store, person, patient_id)
    if draft is not None and draft.trial == trial:
        await asyncio.to_thread(store.drop_draft, draft.key_hash)
        request.session.pop(auth.DRAFT, None)
