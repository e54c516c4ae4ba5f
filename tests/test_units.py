"""A unit's callers wait on futures of their own: giving up cancels a wait, never the unit or another caller's."""

import asyncio

import numpy as np

from statestream.contract.errors import Unavailable
from statestream.server.engine.units import APPLIED, FAILED, PRUNE_WAITERS, Unit


def unit(n: int = 2) -> Unit:
    return Unit([object() for _ in range(n)], np.zeros((n, 1, 3), np.float32), None, None, slots=np.arange(n))


def test_every_caller_learns_the_outcome_and_a_cancelled_one_changes_nothing():
    async def main():
        u = unit()
        first, retry = asyncio.ensure_future(u.waiter()), asyncio.ensure_future(u.waiter())
        await asyncio.sleep(0)
        first.cancel()  # the first caller gives up (deadline, disconnect)
        await asyncio.sleep(0)
        assert first.cancelled() and not retry.done() and u.left == 2  # the unit goes on
        u.fail(0, Unavailable("store down"))
        assert not retry.done()  # one entry is still pending
        u.y, u.states, u.counts = np.zeros((2, 1, 1)), np.zeros((2, 4)), np.ones(2)
        u.fate[1] = APPLIED
        u.settle()
        assert u.left == 0 and u.waiters is None  # done: the waits are resolved and let go
        assert await asyncio.wait_for(retry, 1) is None
        assert list(u.fate) == [FAILED, APPLIED] and u.result(1).step_count == 1

    asyncio.run(main())


def test_a_unit_with_no_caller_settles_alone():
    u = unit(1)
    u.fail(0, Unavailable("x"))  # no waiter was ever made: nothing to resolve, nothing raised
    assert u.left == 0 and u.waiters is None


def test_retries_that_give_up_do_not_pile_up_on_a_unit_in_flight():
    async def main():
        u = unit(1)
        live = u.waiter()
        for _ in range(10 * PRUNE_WAITERS):  # retries that time out while the step is in its commit
            u.waiter().cancel()
        assert len(u.waiters) <= PRUNE_WAITERS + 1 and live in u.waiters
        u.fail(0, Unavailable("x"))
        assert live.done() and u.waiters is None

    asyncio.run(main())


def test_a_retry_waiting_on_a_compare_and_set_re_run_learns_its_outcome():
    """A unit of several sessions that lost a compare-and-set re-runs each entry as a unit of its own (its `parent`
    the original); a retry of that step finds the re-run in flight and waits on it."""
    async def main():
        parent = unit(2)
        parent.y, parent.states, parent.counts = np.zeros((2, 1, 1)), np.zeros((2, 4)), np.zeros(2)
        redo = Unit(parent.sessions[:1], parent.x[:1], [5], None, parent=(parent, 0), slots=np.arange(1))
        retry = redo.waiter()
        redo.y, redo.states, redo.counts = np.ones((1, 1, 1)), np.ones((1, 4)), np.array([3])
        redo.fate[0] = APPLIED
        redo.settle()
        assert await asyncio.wait_for(retry, 1) is None and redo.result(0).step_count == 3
        assert parent.fate[0] == APPLIED and parent.counts[0] == 3 and parent.left == 1

    asyncio.run(main())
