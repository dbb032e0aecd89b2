"""Password hashing for the local-users mode: Argon2id (argon2-cffi) with its default costs.

A hash costs about 64 MiB and tens of milliseconds of a core. Sign-in checks run on a small
pool of their own (``PasswordChecker``), a few at a time and at a lower priority: a flood of
sign-in attempts queues there and never takes the threads the database calls run on, nor more
memory than the pool's few hashes, nor CPU time the rest of the service wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()
# Checked when the name is unknown, so a wrong name takes as long as a wrong password.
_UNKNOWN_USER_HASH = _hasher.hash("no such user: this hash only costs time")

MIN_LENGTH = 8
LOWER_PRIORITY = 10  # niceness of the password threads


def hash_password(password: str) -> str:
    if len(password) < MIN_LENGTH:
        raise ValueError(f"a password has at least {MIN_LENGTH} characters")
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True if ``password`` matches; a missing hash (an identity-provider user) never matches."""
    try:
        return _hasher.verify(stored_hash or _UNKNOWN_USER_HASH, password) and bool(stored_hash)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _yield_to_others() -> None:
    """A password thread runs at a lower priority (Linux: niceness is per thread): a flood of
    sign-ins uses the cores the service's other work leaves idle, never theirs."""
    # Elsewhere (no per-thread niceness) the threads keep the process's priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWER_PRIORITY)


class PasswordChecker:
    """Checks passwords ``concurrency`` at a time on threads of its own."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = max(1, concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None

    def slot(self) -> asyncio.Semaphore:
        """Held while one attempt is decided (its limits read, its hash checked, its outcome
        counted): concurrent attempts at one name cannot all slip past its limit."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        return self._slots

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.concurrency, thread_name_prefix="password", initializer=_yield_to_others
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, verify_password, stored_hash, password)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
