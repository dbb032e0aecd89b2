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
from service.settings import Settings
from service.state.models import WebUser
from service.state.store import migrate
from service.state.worklist import ROLES, WorklistStore
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
    settings: Settings, name: str, role: str, trials: list[str], password: str | None
) -> None:
    """Create or replace a person. ``password`` None: they sign in at the identity provider."""
    if not name.strip() or len(name) > 128:
        raise PrescreenError("a user name has 1 to 128 characters")
    if role not in ROLES:
        raise PrescreenError(f"--role must be one of {', '.join(ROLES)}")
    known = set(catalog.available_trials(settings.rules_dir))
    unknown = sorted(set(trials) - known)
    if unknown:
        raise PrescreenError(f"unknown trial(s): {', '.join(unknown)}")
    try:
        password_hash = hash_password(password) if password is not None else None
    except ValueError as exc:
        raise PrescreenError(str(exc)) from exc
    with _store(settings) as store:
        store.save_user(name.strip(), role, trials, password_hash)


def remove_user(settings: Settings, name: str) -> bool:
    with _store(settings) as store:
        return store.remove_user(name)


def list_users(settings: Settings) -> list[WebUser]:
    with _store(settings) as store:
        return store.users()
