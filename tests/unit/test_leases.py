"""Keeping a lease: renewed while the work goes on, lost when a renewal finds it taken."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.state.leases import LeaseLostError, kept


def test_a_lease_is_renewed_until_the_work_ends() -> None:
    renewals = 0
    third = threading.Event()

    def renew() -> bool:
        nonlocal renewals
        renewals += 1
        if renewals == 3:
            third.set()
        return True

    async def work() -> bool:
        async with kept(renew, lease_seconds=0.03) as lease:
            assert await asyncio.to_thread(third.wait, 60)
            lease.check()  # still ours
        # The renewer ends with the block: no task is left behind.
        return not asyncio.all_tasks() - {asyncio.current_task()}

    assert asyncio.run(work())
    assert renewals >= 3


def test_a_renewal_that_finds_the_claim_taken_marks_the_lease_lost() -> None:
    taken = threading.Event()

    def renew() -> bool:
        taken.set()
        return False  # another replica has it now

    async def work() -> None:
        async with kept(renew, lease_seconds=0.03) as lease:
            assert await asyncio.to_thread(taken.wait, 60)
            while not lease.lost:  # the renewer records it right after renew() returns
                await asyncio.sleep(0.01)
            lease.check()

    with pytest.raises(LeaseLostError):
        asyncio.run(work())


def test_a_failing_renewal_is_tried_again() -> None:
    calls = 0
    recovered = threading.Event()

    def renew() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("database briefly away")
        recovered.set()
        return True

    async def work() -> bool:
        async with kept(renew, lease_seconds=0.03) as lease:
            assert await asyncio.to_thread(recovered.wait, 60)
            return lease.lost

    assert asyncio.run(work()) is False
