"""One write-back per patient and trial at a time, within a replica and across replicas.

Two screenings of one patient writing back at once both read "no ResearchSubject yet" and both
write: the second transaction's conditional create finds the first one's subject, but its
Provenance and Observations are written again. Holding a claim on (trial, patient) from reading
the subjects to the end of the write makes the second screening read what the first wrote, and
find nothing left to write.

Within a replica an asyncio lock per patient queues the screenings (no point asking the database
while a sibling task holds the patient); across replicas a leased row in ``writeback_claims``
does. Patients are taken in sorted order, by every replica, so two writers wanting overlapping
groups never wait for each other in a circle.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from service.errors import error_kind
from service.state.leases import kept
from service.state.store import Store

log = logging.getLogger(__name__)

# Waiting for another replica's claim: poll the database, quickly at first.
FIRST_POLL_SECONDS = 0.02
LAST_POLL_SECONDS = 0.5


class _Gate:
    """An asyncio lock and how many tasks hold or wait for it (the entry goes when none do)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class WriteBackLocks:
    def __init__(self, store: Store, owner: str, lease_seconds: float) -> None:
        self.store = store
        self.owner = owner
        self.lease_seconds = lease_seconds
        self._gates: dict[tuple[str, str], _Gate] = {}

    def waiting(self, trial: str, patient_id: str) -> int:
        """Tasks of this replica holding or waiting for the patient's write-back."""
        gate = self._gates.get((trial, patient_id))
        return gate.users if gate is not None else 0

    @asynccontextmanager
    async def hold(self, trial: str, patient_ids: Iterable[str]) -> AsyncIterator[None]:
        """Hold every patient's write-back for the block (in-process lock, then the claim)."""
        locked: list[str] = []
        claimed: list[str] = []
        try:
            for patient_id in sorted(set(patient_ids)):
                await self._lock(trial, patient_id)
                locked.append(patient_id)
                await self._claim(trial, patient_id)
                claimed.append(patient_id)
            renew = functools.partial(
                self.store.renew_writeback, trial, claimed, self.owner, self.lease_seconds
            )
            async with kept(renew, self.lease_seconds):
                yield
        finally:
            if claimed:
                try:
                    await asyncio.to_thread(
                        self.store.release_writeback, trial, claimed, self.owner
                    )
                except Exception as exc:
                    # The claims expire with their lease: other writers only wait longer.
                    log.warning("releasing write-back claims failed (%s)", error_kind(exc))
            for patient_id in locked:
                self._unlock(trial, patient_id)

    async def _lock(self, trial: str, patient_id: str) -> None:
        gate = self._gates.setdefault((trial, patient_id), _Gate())
        gate.users += 1
        try:
            await gate.lock.acquire()
        except BaseException:
            self._leave(trial, patient_id, gate)
            raise

    def _unlock(self, trial: str, patient_id: str) -> None:
        gate = self._gates[(trial, patient_id)]
        gate.lock.release()
        self._leave(trial, patient_id, gate)

    def _leave(self, trial: str, patient_id: str, gate: _Gate) -> None:
        gate.users -= 1
        if gate.users == 0:
            del self._gates[(trial, patient_id)]

    async def _claim(self, trial: str, patient_id: str) -> None:
        delay = FIRST_POLL_SECONDS
        while not await asyncio.to_thread(
            self.store.claim_writeback, trial, patient_id, self.owner, self.lease_seconds
        ):
            # Another replica is writing this patient back; its claim ends with its write, or
            # with its lease if it died meanwhile.
            await asyncio.sleep(delay)
            delay = min(delay * 2, LAST_POLL_SECONDS)
