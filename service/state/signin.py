"""Failed sign-ins with a password, counted per user name and per client address.

After ``failures_allowed`` failures of one name, or from one address, within ``window_seconds``
of the first, each further failure makes the next try wait: 1 s, then 2, 4, ... up to
``longest_wait_seconds``. A try made while waiting is refused without looking at the password
(and counts for nothing), so the right password is refused too for that while; the window
ends ``window_seconds`` after its first failure, and a successful sign-in clears its name's
count. No name or address is ever locked out for longer than ``longest_wait_seconds`` at a
time.

The counts are rows of the shared database (``sign_in_failures``), updated in one statement
each, so every replica sees every failure. Keys are hashes: a mistyped password typed into
the name field is not kept in clear.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from service.state.models import SignInFailures
from service.state.store import now

MEMORY_KEYS = 10_000  # waits one process remembers at most


@dataclass(frozen=True)
class SignInPolicy:
    failures_allowed: int = 10
    window_seconds: float = 900.0
    longest_wait_seconds: float = 60.0

    def wait_after(self, failures: int) -> float:
        """Seconds the next try waits after this many failures in the window."""
        over = failures - self.failures_allowed
        if over < 0:
            return 0.0
        return float(min(self.longest_wait_seconds, 2.0 ** min(over, 32)))


def name_key(name: str) -> str:
    """One count for a name however it is capitalised."""
    return _key("name", name.strip().casefold())


def address_key(address: str) -> str:
    return _key("address", address)


def _key(kind: str, value: str) -> str:
    return hashlib.sha256(f"{kind}\x00{value}".encode()).hexdigest()


class SignInLimits:
    """The counts in the database, and what this process learnt of them: a wait read from the
    database is remembered until it ends, so a flood of tries that must wait is refused
    without a database call each (a wait only ever ends by time, so the memory is never
    wrong by more than a success on another replica, at most ``longest_wait_seconds``)."""

    def __init__(self, engine: Engine, policy: SignInPolicy) -> None:
        self.engine = engine
        self.policy = policy
        self._known: dict[str, datetime] = {}  # key -> until when it waits

    def known_wait(self, keys: Sequence[str], at: datetime | None = None) -> float:
        """The wait this process already knows of for these keys (no database call)."""
        stamp = at or now()
        until = max((self._known.get(key, stamp) for key in keys), default=stamp)
        return max(0.0, (until - stamp).total_seconds())

    def wait_seconds(self, keys: Sequence[str], at: datetime | None = None) -> float:
        """How long a try with these keys must still wait (0: it may go on)."""
        stamp = at or now()
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(SignInFailures.key, SignInFailures.locked_until).where(
                    SignInFailures.key.in_(list(keys)), SignInFailures.locked_until > stamp
                )
            ).all()
        waits: dict[str, datetime] = {key: until for key, until in rows if until is not None}
        self._remember(waits, stamp)
        latest = max(waits.values(), default=stamp)
        return max(0.0, (latest - stamp).total_seconds())

    def _remember(self, waits: dict[str, datetime], stamp: datetime) -> None:
        if len(self._known) > MEMORY_KEYS:  # a spray of names: keep only live waits
            self._known = {k: t for k, t in self._known.items() if t > stamp}
            if len(self._known) > MEMORY_KEYS:
                self._known.clear()
        self._known.update(waits)

    def record_failure(self, keys: Sequence[str], at: datetime | None = None) -> None:
        stamp = at or now()
        window = timedelta(seconds=self.policy.window_seconds)
        table = SignInFailures
        insert = (
            postgresql.insert(table)
            if self.engine.dialect.name == "postgresql"
            else sqlite.insert(table)
        )
        expired = table.window_start < stamp - window
        with self.engine.begin() as connection:
            # Rows whose window and wait are both over are of no use any more.
            connection.execute(
                delete(table).where(
                    table.window_start < stamp - window,
                    or_(table.locked_until.is_(None), table.locked_until < stamp),
                )
            )
            for key in sorted(set(keys)):  # a fixed order: no deadlock between two replicas
                failures = connection.scalar(
                    insert.values(key=key, failures=1, window_start=stamp, locked_until=None)
                    .on_conflict_do_update(
                        index_elements=["key"],
                        set_={
                            "failures": case((expired, 1), else_=table.failures + 1),
                            "window_start": case((expired, stamp), else_=table.window_start),
                            "locked_until": case((expired, None), else_=table.locked_until),
                        },
                    )
                    .returning(table.failures)
                )
                wait = self.policy.wait_after(int(failures or 0))
                if wait > 0:
                    until = stamp + timedelta(seconds=wait)
                    self._remember({key: max(until, self._known.get(key, until))}, stamp)
                    connection.execute(
                        update(table)
                        .where(
                            table.key == key,
                            or_(table.locked_until.is_(None), table.locked_until < until),
                        )
                        .values(locked_until=until)
                    )

    def record_success(self, key: str) -> None:
        """A name signed in: its failures are forgiven (its address's are not)."""
        self._known.pop(key, None)
        with self.engine.begin() as connection:
            connection.execute(delete(SignInFailures).where(SignInFailures.key == key))
