"""BatchPolicy on a fake clock: run at once, after one loop turn, or after waiting for more."""

from statestream.server.engine.policy import BatchPolicy


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_unary_steps_run_inline_without_a_queue_delay():
    assert BatchPolicy(256, 0.0, clock=Clock()).inline(stream=False)


def test_nothing_runs_inline_when_the_operator_asked_for_batching():
    p = BatchPolicy(256, 0.005, clock=Clock())
    assert not p.inline(stream=False) and not p.inline(stream=True)


def test_a_lone_stream_runs_inline_except_for_one_probe_in_sixteen():
    p = BatchPolicy(256, 0.0, clock=Clock(), probe_every=16)
    decisions = [p.inline(stream=True) for _ in range(32)]
    assert decisions.count(False) == 2 and decisions[15] is False and decisions[31] is False


def test_stream_steps_queue_while_runs_are_shared_and_go_inline_after_the_solo_window():
    clock = Clock()
    p = BatchPolicy(256, 0.0, clock=clock, solo_window=0.05)
    p.ran(1)
    assert p.inline(stream=True)  # solo runs only
    p.ran(3)  # a run held three sessions: other streams are active
    assert not p.inline(stream=True)
    clock.now += 0.049
    assert not p.inline(stream=True)
    clock.now += 0.002  # 51 ms of solo runs
    assert p.inline(stream=True)


def test_unary_steps_ignore_the_stream_heuristic():
    p = BatchPolicy(256, 0.0, clock=Clock())
    p.ran(8)
    assert p.inline(stream=False)


def test_wait_is_one_loop_turn_without_a_queue_delay():
    assert BatchPolicy(256, 0.0, clock=Clock()).wait(ready=1, oldest=0.0) == 0.0


def test_wait_fills_a_batch_until_the_oldest_step_has_waited_the_delay():
    clock = Clock()
    p = BatchPolicy(8, 0.010, clock=clock)
    assert abs(p.wait(ready=3, oldest=clock.now) - 0.010) < 1e-12
    clock.now += 0.004
    assert abs(p.wait(ready=3, oldest=clock.now - 0.004) - 0.006) < 1e-12
    clock.now += 0.02
    assert p.wait(ready=3, oldest=clock.now - 0.024) == 0.0


def test_a_full_batch_runs_at_once_even_with_a_delay():
    clock = Clock()
    assert BatchPolicy(8, 0.010, clock=clock).wait(ready=8, oldest=clock.now) == 0.0
