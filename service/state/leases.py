"""Keeping a lease alive while the work it covers goes on.

A claim in the database (a run, an alert being sent, a patient's write-back) names its owner and
expires: if the replica holding it dies, another one takes the work over once the lease has run
out. While the work goes on, the lease is renewed every third of its length, so a slow webhook or
a long run keeps what it holds. A renewal that finds the claim gone (the lease ran out while this
replica was stalled, and another took over) marks the lease lost; the work stops at its next check.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from service.errors import error_kind

log = logging.getLogger(__name__)


class LeaseLostError(Exception):
    """Another replica took the work over: this one must stop without recording an outcome."""


class Lease:
    def __init__(self) -> None:
        self.lost = False

    def check(self) -> None:
        """Raise LeaseLostError once a renewal found the claim taken by someone else."""
        if self.lost:
            raise LeaseLostError


@asynccontextmanager
async def kept(renew: Callable[[], bool], lease_seconds: float) -> AsyncIterator[Lease]:
    """Renew a claim (``renew`` returns False when it is no longer ours) until the block ends."""
    lease = Lease()

    async def renew_until_done() -> None:
        while True:
            await asyncio.sleep(lease_seconds / 3)
            try:
                still_ours = await asyncio.to_thread(renew)
            except Exception as exc:
                # The database may be back before the lease runs out: keep trying.
                log.warning("lease renewal failed (%s); trying again", error_kind(exc))
                continue
            if not still_ours:
                lease.lost = True
                return

    renewer = asyncio.create_task(renew_until_done())
    try:
        yield lease
    finally:
        renewer.cancel()
        await asyncio.wait([renewer])
