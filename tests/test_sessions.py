"""Session phases and exactly-once bookkeeping, in-process, on a fake clock."""

import numpy as np
import pytest
from serverproc import DEMO_MODEL

from statestream.contract.errors import FailedPrecondition, InvalidArgument, NotFound
from statestream.server.engine.model import ModelRunner
from statestream.server.engine.sessions import GONE, READY, Phase, StepResult
from statestream.server.engine.table import SessionTable


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeUnit:
    def __init__(self, seq=None):
        self.seq = seq

    def seq_of(self, s):
        return self.seq

    def fp_of(self, s):
        return 0


@pytest.fixture(scope="module")
def runner():
    return ModelRunner(DEMO_MODEL)


@pytest.fixture
def table(runner):
    return SessionTable({"demo": runner}, max_sessions=10, default_timeout=5.0, max_timeout=60.0, clock=Clock())


def result(seq, count=1):
    return StepResult(np.zeros((1, 1), np.float32), np.zeros(64, np.float32), count, seq)


def test_a_step_moves_a_session_idle_queued_running_idle(table):
    s = table.open("demo", "a")
    assert s.phase is Phase.IDLE
    u = FakeUnit(1)
    assert s.accept(1) is None
    assert s.enqueue(u, 1) is True and s.phase is Phase.QUEUED and s.accepted_seq == 1
    s.start(u)
    assert s.phase is Phase.RUNNING and s.running is u
    assert s.finish(1, result(1)) == 0
    assert s.phase is Phase.IDLE and s.step_count == 1 and s.last_seq == 1 and s.version == 1


def test_a_second_step_queues_behind_a_running_one_and_is_ready_after_it(table):
    s = table.open("demo", "a")
    u1, u2 = FakeUnit(), FakeUnit()
    s.enqueue(u1, None)
    s.start(u1)
    assert s.enqueue(u2, None) is False  # not ready: the session is running
    assert s.finish(1, None) == READY and s.phase is Phase.QUEUED and s.head is u2


def test_accept_replays_the_last_applied_step_and_finds_one_in_flight(table):
    s = table.open("demo", "a")
    u = FakeUnit(1)
    s.enqueue(u, 1)
    assert s.accept(1) is u  # retry of a queued step: wait for it
    s.start(u)
    assert s.accept(1) is u  # ... or a running one
    res = result(1)
    s.finish(1, res)
    assert s.accept(1) is res  # recorded: replay
    with pytest.raises(FailedPrecondition, match="gap.*expected 2"):
        s.accept(3)
    with pytest.raises(InvalidArgument):
        s.accept(0)


def test_a_failed_step_frees_its_sequence_number(table):
    s = table.open("demo", "a")
    u = FakeUnit(1)
    s.enqueue(u, 1)
    s.start(u)
    s.undo()
    s.forget_accepted()
    assert s.phase is Phase.IDLE and s.accept(1) is None


def test_hold_is_refused_while_a_step_is_in_flight(table):
    s = table.open("demo", "a")
    u = FakeUnit()
    s.enqueue(u, None)
    with pytest.raises(FailedPrecondition, match="in flight"):
        s.hold()
    s.start(u)
    s.finish(1, None)
    s.hold()
    assert s.phase is Phase.HELD
    assert s.enqueue(FakeUnit(), None) is False  # steps queue behind a held session
    assert s.release() is True and s.phase is Phase.QUEUED


def test_closing_a_running_session_frees_its_slot_only_after_the_run(table):
    slab = table.slabs["demo", 1]
    s = table.open("demo", "a")
    u = FakeUnit()
    s.enqueue(u, None)
    s.start(u)
    free = len(slab._free)
    table.close(s)
    assert s.phase is Phase.CLOSED and len(slab._free) == free
    assert s.finish(1, None) == GONE
    table.release(s)
    assert len(slab._free) == free + 1
    with pytest.raises(NotFound):
        table.get("a")
    with pytest.raises(NotFound, match="closed"):
        s.enqueue(FakeUnit(), None)


def test_expiry_skips_sessions_with_work_and_says_expired(table):
    idle = table.open("demo", "idle")
    busy = table.open("demo", "busy")
    busy.enqueue(FakeUnit(), None)
    table.clock.now = 6.0
    assert table.expire() == [idle]
    with pytest.raises(NotFound, match="expired after 5 s"):
        table.get("idle")
    assert table.get("busy") is busy


def test_adopt_replaces_a_stale_cached_copy(table):
    s = table.open("demo", "a")
    rec = table.records([s], [s.slot], np.full((1, table.slabs["demo", 1].width), 0.5, np.float32), [7],
                        [result(3, 7)], [0])[0]
    assert rec.version == 1
    rec.version = 9
    assert table.adopt(rec) is s
    assert s.step_count == 7 and s.last_seq == s.accepted_seq == 3 and s.version == 9
    assert np.all(table.state(s) == 0.5)


@pytest.mark.parametrize("closed,waiting", [((), ()), ((3,), ()), ((), (5,)), ((2, 9), (4, 9))])
def test_finish_many_moves_a_bulk_run_on_in_one_pass(runner, closed, waiting):
    """sessions.finish_many, the one-pass apply of a run of BULK sessions or more: every session's count and
    version move on and it leaves the unit; a session closed meanwhile stays closed and is named; one with a step
    queued behind the run is QUEUED again and that unit is returned (ready), unless it was closed too."""
    from statestream.server.engine.sessions import BULK, claim_many, finish_many

    table = SessionTable({"demo": runner}, max_sessions=64, default_timeout=5.0, max_timeout=60.0, clock=Clock())
    sessions = [table.open("demo", f"s{i}") for i in range(BULK + 4)]
    cells = sessions[0].cells
    slots = np.array([s.slot for s in sessions])
    run, behind = FakeUnit(), {i: FakeUnit() for i in waiting}
    claim_many(cells, sessions, slots, run, None)
    for i, u in behind.items():
        assert sessions[i].enqueue(u, None) is False  # queued behind the running step
    for i in closed:
        sessions[i].close()
    ready, gone = finish_many(cells, slots, run, np.arange(len(sessions)) + 7)
    assert gone.tolist() == sorted(closed)
    assert ready == [behind[i] for i in sorted(waiting) if i not in closed]
    for i, s in enumerate(sessions):
        assert s.running is None and s.step_count == i + 7 and s.version == 1
        want = Phase.CLOSED if i in closed else Phase.QUEUED if i in waiting else Phase.IDLE
        assert s.phase is want, (i, s.phase)


def start_run(cells, units) -> bool:
    """sessions.start_block as the batcher calls it for a run of one-session units: their slots, one owner each."""
    from statestream.server.engine.sessions import start_block

    owners = np.empty(len(units), dtype=object)
    owners[:] = units
    return start_block(cells, np.array([u.sessions[0].slot for u in units]), owners)


def test_start_block_refuses_a_unit_that_is_not_its_sessions_next(runner):
    """start_block checks what Session.start checks: a unit that is not its session's head changes nothing."""
    from statestream.server.engine.sessions import BULK

    table = SessionTable({"demo": runner}, max_sessions=64, default_timeout=5.0, max_timeout=60.0, clock=Clock())
    sessions = [table.open("demo", f"s{i}") for i in range(BULK)]
    units = [FakeUnit() for _ in sessions]
    for s, u in zip(sessions, units):
        u.sessions = [s]
        s.enqueue(u, None)
    stranger = FakeUnit()
    stranger.sessions = [sessions[2]]
    assert start_run(sessions[0].cells, [*units[:2], stranger, *units[3:]]) is False
    assert all(s.phase is Phase.QUEUED and s.head is u for s, u in zip(sessions, units))


@pytest.mark.parametrize("behind", [None, 3])
def test_start_block_starts_a_runs_one_session_units_in_one_pass_or_leaves_them(runner, behind):
    """sessions.start_block for a run of streams' steps (one session per unit): when each session has just its unit
    queued, all start at once (RUNNING with their own unit, nothing queued); when one has a second step behind it,
    nothing changes and False sends the run to Session.start one by one."""
    from statestream.server.engine.sessions import BULK

    table = SessionTable({"demo": runner}, max_sessions=64, default_timeout=5.0, max_timeout=60.0, clock=Clock())
    sessions = [table.open("demo", f"s{i}") for i in range(BULK + 2)]
    units = [FakeUnit() for _ in sessions]
    for s, u in zip(sessions, units):
        u.sessions = [s]
        assert s.enqueue(u, None) is True  # ready for it
    if behind is not None:
        assert sessions[behind].enqueue(FakeUnit(), None) is False
    started = start_run(sessions[0].cells, units)
    assert started is (behind is None)
    for i, (s, u) in enumerate(zip(sessions, units)):
        if started:
            assert s.phase is Phase.RUNNING and s.running is u and s.head is None and s.waiting == 0
        else:
            assert s.phase is Phase.QUEUED and s.running is None and s.head is u
            assert s.waiting == (2 if i == behind else 1)
    if not started:  # one by one, as the batcher then does
        for s, u in zip(sessions, units):
            s.start(u)
        assert sessions[behind].head is not None and sessions[behind].waiting == 1
