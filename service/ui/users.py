"""``prescreen users``: the people who may sign in to the web worklist."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from sqlalchemy import create_engine

from service import catalog
from service.errors import PrescreenError
from service.roles import ROLES, Access, RoleError
from service.settings import Settings
from service.state.models import WebUser
from service.state.store import migrate
from service.state.worklist import IdentityTakenError, WorklistStore
from service.ui.passwords import hash_password


@contextmanager
def _store(settings: Settings) -> Iterator[WorklistStore]:
    migrate(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        yield WorklistStore(engine)
    finally:
        engine.dispose()


def read_password(stdin: TextIO = sys.stdin) -> str:
    """Asked twice at a terminal; otherwise the first line of standard input (for scripts)."""
    if stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != first:
            raise PrescreenError("the two passwords differ")
        return first
    return stdin.readline().rstrip("\r\n")


def add_user(
    settings: Settings,
    name: str,
    roles: list[str],
    trials: list[str],
    password: str | None,
    identity: tuple[str, str] | None = None,
) -> None:
    """Create or replace a person. ``password`` None: they sign in at the identity provider,
    as the account ``identity`` (issuer, subject) when given; a person replaced without one
    keeps the account they were linked to."""
    if not name.strip() or len(name) > 128:
        raise PrescreenError("a user name has 1 to 128 characters")
    try:
        access = Access.of(roles, trials)
    except RoleError as exc:
        raise PrescreenError(str(exc)) from exc
    if not access.roles:
        raise PrescreenError(f"give --role: {', '.join(ROLES)}")
    known = set(catalog.available_trials(settings.rules_dir))
    unknown = sorted(set(access.trials) - known)
    if unknown:
        raise PrescreenError(f"unknown trial(s): {', '.join(unknown)}")
    if identity is not None:
        identity = _identity(*identity)
    try:
        password_hash = hash_password(password) if password is not None else None
    except ValueError as exc:
        raise PrescreenError(str(exc)) from exc
    with _store(settings) as store:
        try:
            store.save_user(name.strip(), access, password_hash, identity)
        except IdentityTakenError as taken:
            raise PrescreenError(f"that identity-provider account is {taken.other}'s") from taken


def link_user(settings: Settings, name: str, issuer: str, subject: str) -> None:
    """Link an existing person to the identity-provider account that signs in as them."""
    issuer, subject = _identity(issuer, subject)
    with _store(settings) as store:
        try:
            found = store.link_user(name, issuer, subject)
        except IdentityTakenError as taken:
            raise PrescreenError(f"that identity-provider account is {taken.other}'s") from taken
    if not found:
        raise PrescreenError(f"no user named '{name}'")


def _identity(issuer: str, subject: str) -> tuple[str, str]:
    """The (issuer, subject) pair as stored: the issuer an http(s) URL, both non-empty."""
    issuer, subject = issuer.strip(), subject.strip()
    if not issuer.startswith(("https://", "http://")) or len(issuer) > 255:
        raise PrescreenError("--oidc-issuer is the identity provider's issuer URL (its iss)")
    if not subject or len(subject) > 255:
        raise PrescreenError("--oidc-subject is the account's sub claim (1 to 255 characters)")
    return issuer, subject


def remove_user(settings: Settings, name: str) -> bool:
    with _store(settings) as store:
        return store.remove_user(name)


def list_users(settings: Settings) -> list[WebUser]:
    with _store(settings) as store:
        return store.users()
