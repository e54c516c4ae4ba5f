"""The asyncio client (statestream.aio) against live servers: the sync client's answers bit for bit, exactly-once
through kill -9 and lost replies, killed and frozen servers; and the validation both clients share."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest
from mdproxy import RecordingProxy
from reference import stepped
from serverproc import DEMO_MODEL, ServerProcess
from test_exactly_once import durable  # noqa: F401 - the kill -9 and restart fixture
from test_faults import signal_for

from statestream import aio
from statestream.client import Client, DeadlineExceeded, InvalidArgument, StatestreamError, Unavailable


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def server():
    with ServerProcess(DEMO_MODEL) as srv:
        yield srv


@pytest.fixture
def lone_server():
    """A server of its own, for a test that kills or freezes it."""
    srv = ServerProcess(DEMO_MODEL).start()
    yield srv
    if srv.proc.poll() is None:
        os.kill(srv.pid, signal.SIGCONT)
    srv.stop()


def bits(a) -> list[int]:
    return np.asarray(a, dtype=np.float32).ravel().view(np.uint32).tolist()


async def endless(features: int = 3):
    rng = np.random.default_rng(0)
    while True:
        yield rng.normal(size=features).astype(np.float32)
        await asyncio.sleep(0)


# -- one validation for both clients -------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 2, 3), (6,), (2, 4), (0, 3)])
def test_a_step_of_another_shape_is_refused_by_both_clients_before_anything_is_sent(server, shape):
    x = np.ones(shape, np.float32)
    with Client(server.target) as c, c.session("demo") as s:
        with pytest.raises(ValueError, match=r"\(F,\) = \(3,\) for one timestep or \(T, F\) = \(T, 3\)") as e:
            s.step(x)
        assert str(shape).replace(" ", "") in str(e.value).replace(" ", "")
        with pytest.raises(ValueError, match=r"\(F,\)"):
            list(s.stream([np.ones(3), x]))
        assert s.get_state().step_count == 1  # the stream's first step went; the refused ones did not

    async def main():
        async with aio.Client(server.target) as c, await c.session("demo") as s:
            with pytest.raises(ValueError, match=r"\(F,\) = \(3,\) for one timestep"):
                await s.step(x)
            with pytest.raises(ValueError, match=r"\(F,\)"):
                async for _ in s.stream([x]):
                    pass
            return (await s.get_state()).step_count

    assert run(main()) == 0


def test_open_or_attach_opens_then_reattaches_and_resumes_the_numbering_sync_and_aio(server):
    xs = signal_for(12, seed=20)
    with Client(server.target) as c:
        s = c.open_or_attach("demo", "restarted-sensor", exactly_once=True)
        assert s.get_state().step_count == 0
        got = [s.step(x) for x in xs[:4]]
    with Client(server.target) as c:  # the sensor restarted: same name, numbering picked up from the server
        s = c.open_or_attach("demo", "restarted-sensor", exactly_once=True)
        assert s.last_sequence_number == 4
        got += [s.step(x) for x in xs[4:8]]

    async def main():
        async with aio.Client(server.target) as c:
            s = await c.open_or_attach("demo", "restarted-sensor", exactly_once=True)
            assert s.last_sequence_number == 8
            out = [y async for y in s.stream(xs[8:])]
            st = await s.get_state()
            await s.close()
            return out, st

    more, st = run(main())
    assert st.step_count == 12 and st.last_sequence_number == 12
    np.testing.assert_allclose(np.array(got + more), stepped(xs), atol=1e-6)


# -- the same answers as the sync client ----------------------------------------------------


def test_aio_answers_bit_identically_to_the_sync_client(server):
    xs = signal_for(10, seed=21)
    g = np.random.default_rng(22).normal(size=(4, 2, 3)).astype(np.float32)

    def sync_side():
        with Client(server.target) as c:
            with c.session("demo") as s:
                a = s.step(xs[:3], return_sequences=True)
                b, states = s.step(xs[3], return_state=True)
                streamed = list(s.stream(xs[4:]))
                saved = s.get_state()
            with c.session("demo") as s2:
                s2.set_state(saved)
                after = s2.step(xs[0])
            with c.group("demo", 4) as grp:
                gy = grp.step(g, masked=[1], return_sequences=True)
            return a, b, states, streamed, saved, after, gy

    async def aio_side():
        async with aio.Client(server.target) as c:
            async with await c.session("demo") as s:
                a = await s.step(xs[:3], return_sequences=True)
                b, states = await s.step(xs[3], return_state=True)
                streamed = [y async for y in s.stream(xs[4:])]
                saved = await s.get_state()
            async with await c.session("demo") as s2:
                await s2.set_state(saved)
                after = await s2.step(xs[0])
            async with await c.group("demo", 4) as grp:
                gy = await grp.step(g, masked=[1], return_sequences=True)
            return a, b, states, streamed, saved, after, gy

    want, got = sync_side(), run(aio_side())
    for name, w, h in zip(("sequences", "last", "states", "stream", "saved", "after set_state", "group"), want, got):
        if name in ("states", "saved"):
            w, h = (w.states, h.states) if name == "saved" else (w, h)
            assert w.keys() == h.keys(), name
            for layer in w:
                for k in w[layer]:
                    assert bits(w[layer][k]) == bits(h[layer][k]), (name, layer, k)
        else:
            assert np.shape(w) == np.shape(h) and bits(w) == bits(h), name
    assert not got[-1][1].any()  # the masked member's rows are zero


def test_an_in_band_error_raises_for_its_step_and_the_stream_stays_usable(server):
    async def main():
        async with aio.Client(server.target) as c, await c.session("demo") as s:
            with pytest.raises(InvalidArgument, match="NaN"):
                async for _ in s.stream([np.full(3, np.nan)]):
                    pass
            ys = [y async for y in s.stream(np.zeros((3, 3)))]
            return len(ys), (await s.get_state()).step_count

    assert run(main()) == (3, 3)


# -- failures -------------------------------------------------------------------------------


def test_aio_exactly_once_stream_resumes_after_kill_9_and_equals_the_reference(durable):  # noqa: F811
    xs = signal_for(60, seed=23)

    async def main():
        async with aio.Client(f"127.0.0.1:{durable.port}", timeout=30) as c:
            s = await c.session("demo", "aio-eo-stream", exactly_once=True)
            got = []
            async for y in s.stream(xs):
                got.append(y)
                if len(got) == 20:
                    durable.kill_and_restart()  # the next step is on the wire or about to be
            await asyncio.to_thread(durable.join)
            return got, await s.get_state(), c.retries

    got, st, retries = run(main())
    assert retries >= 1
    assert len(got) == 60 and st.step_count == 60 and st.last_sequence_number == 60  # none lost, none doubled
    np.testing.assert_allclose(np.array(got), stepped(xs), atol=1e-6)


def test_aio_unary_steps_retry_through_a_restart(durable):  # noqa: F811
    xs = signal_for(20, seed=24)

    async def main():
        async with aio.Client(f"127.0.0.1:{durable.port}", timeout=30) as c:
            s = await c.session("demo", "aio-eo-unary", exactly_once=True)
            got = [await s.step(x) for x in xs[:8]]
            durable.kill_and_restart()
            got += [await s.step(x) for x in xs[8:]]  # the first of these waits for the restarted server
            await asyncio.to_thread(durable.join)
            return got, await s.get_state(), c.retries

    got, st, retries = run(main())
    assert retries >= 1 and st.step_count == 20
    np.testing.assert_allclose(np.array(got), stepped(xs), atol=1e-6)


def test_aio_lost_step_reply_is_replayed_not_applied_twice(server):
    xs = signal_for(3, seed=25)

    async def main(proxy):
        async with aio.Client(proxy.target) as c:
            s = await c.session("demo", "aio-lost-step", exactly_once=True)
            y0 = await s.step(xs[0])
            proxy.drop_replies["Step"] = 1
            y1 = await s.step(xs[1])  # applied, answer lost, resent with sequence number 2: the recorded answer
            y2 = await s.step(xs[2])
            return [y0, y1, y2], c.retries, (await s.get_state()).step_count

    with RecordingProxy(server.target) as proxy:
        got, retries, count = run(main(proxy))
    assert retries == 1 and count == 3
    np.testing.assert_allclose(np.array(got), stepped(xs), atol=1e-6)


def test_aio_server_killed_mid_stream_raises_unavailable(lone_server):
    async def main():
        async with aio.Client(lone_server.target) as c:
            s = await c.session("demo")
            got = 0
            with pytest.raises(Unavailable) as err:
                async for _ in s.stream(endless()):
                    got += 1
                    if got == 20:
                        lone_server.kill()  # SIGKILL with steps on the wire
            assert isinstance(err.value, StatestreamError) and err.value.__cause__ is None
            return got

    assert run(main()) >= 20


def test_aio_a_frozen_server_gives_deadline_exceeded_within_the_clients_timeout(lone_server):
    async def main():
        async with aio.Client(lone_server.target, timeout=1.0) as c:
            s = await c.session("demo")
            stream = s.stream(endless())
            for _ in range(5):
                await anext(stream)
            os.kill(lone_server.pid, signal.SIGSTOP)
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceeded, match="no reply within 1 s"):
                for _ in range(100_000):  # replies sent before the server froze may be buffered: read past them
                    await anext(stream)
            elapsed = time.monotonic() - t0
            os.kill(lone_server.pid, signal.SIGCONT)
            return elapsed

    assert run(main()) < 5


def test_aio_a_stream_may_outlast_the_timeout_and_a_slow_caller_is_not_a_hung_server(server):
    async def main():
        async with aio.Client(server.target, timeout=0.3) as c:
            s = await c.session("demo")
            t0, n = time.monotonic(), 0
            async for _ in s.stream(_paced(endless(), 0.03)):
                n += 1
                if time.monotonic() - t0 > 0.8:
                    break
            held = 0
            async for _ in s.stream(np.zeros((3, 3), np.float32)):  # all sent at once, answered at once
                await asyncio.sleep(0.4)  # longer than the timeout, with a result in hand
                held += 1
            return n, held

    n, held = run(main())
    assert n > 10 and held == 3


async def _paced(steps, pause: float):
    async for x in steps:
        await asyncio.sleep(pause)
        yield x


def test_frames_from_both_clients_open_missing_sessions_and_report_entry_errors(server):
    xs = signal_for(2, seed=26)
    frame = np.stack([xs[0], [0.0, 0.0, np.nan]]).astype(np.float32)
    with Client(server.target) as c:
        y, errors = c.frame("demo", ["py-frame-a", "py-frame-b"], frame, open_if_missing=True)

    async def main():
        async with aio.Client(server.target) as c:
            return await c.frame("demo", ["aio-frame-a", "aio-frame-b"], frame, open_if_missing=True)

    ay, aerrors = run(main())
    assert bits(y) == bits(ay) and y.shape == (2, 1)
    np.testing.assert_allclose(y[0], stepped(xs[:1])[0], atol=1e-6)
    assert not y[1].any()  # the failed entry's row is zero
    for errs in (errors, aerrors):
        assert list(errs) == [1] and isinstance(errs[1], InvalidArgument) and "NaN" in errs[1].message
