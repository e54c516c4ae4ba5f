"""Steps of one session are applied strictly in order, one per batch, even from concurrent unary calls."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
from inproc import InProcessServer
from reference import stepped
from serverproc import DEMO_MODEL

from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc


def test_concurrent_unary_steps_on_one_session_apply_in_order():
    n = 200
    xs = np.random.default_rng(3).normal(size=(n, 3)).astype(np.float32)
    with InProcessServer.from_args(DEMO_MODEL, "--max-queue-delay", "0.002", "--max-pending-per-session", "1000") as srv:

        async def run():
            async with grpc.aio.insecure_channel(srv.target) as ch:
                stub = pb_grpc.StateStreamServiceStub(ch)
                await stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="one"))
                calls = [stub.Step(pb.StepRequest(session_id="one", input=x)) for x in xs]  # all in flight at once
                return await asyncio.gather(*calls)

        replies = asyncio.run(run())
    counts = [r.step_count for r in replies]
    assert sorted(counts) == list(range(1, n + 1))  # each step applied once, never two in one batch
    order = np.argsort(counts)  # the order the server applied them in
    got = np.array([replies[i].output[0] for i in order])
    np.testing.assert_allclose(got, stepped(xs[order])[:, 0], atol=1e-5)


def test_close_with_queued_steps_fails_them_and_the_batcher_carries_on():
    with InProcessServer.from_args(DEMO_MODEL, "--max-queue-delay", "0.3") as srv:

        async def run():
            async with grpc.aio.insecure_channel(srv.target) as ch:
                stub = pb_grpc.StateStreamServiceStub(ch)
                for sid in ("a", "b"):
                    await stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid))
                queued = [asyncio.ensure_future(stub.Step(pb.StepRequest(session_id="a", input=[1, 2, 3])))
                          for _ in range(3)]
                await srv.until(lambda: (s := srv.app.table.find("a")) is not None and s.waiting == 3)
                await stub.CloseSession(pb.CloseSessionRequest(session_id="a"))
                outcomes = await asyncio.gather(*queued, return_exceptions=True)
                after = await stub.Step(pb.StepRequest(session_id="b", input=[1, 2, 3]), timeout=5)
                return outcomes, after

        outcomes, after = asyncio.run(run())
    codes = [o.code() for o in outcomes if isinstance(o, grpc.RpcError)]
    assert codes and all(c == grpc.StatusCode.NOT_FOUND for c in codes)
    assert all("closed" in o.details() for o in outcomes if isinstance(o, grpc.RpcError))
    assert after.step_count == 1


def test_requests_with_different_T_batch_separately_and_stay_exact():
    """Sessions stepping T=1 and T=3 at once: each batch holds one T; every session equals its reference."""
    n = 24
    rng = np.random.default_rng(11)
    with InProcessServer.from_args(DEMO_MODEL, "--max-queue-delay", "0.01") as srv:

        async def run():
            async with grpc.aio.insecure_channel(srv.target) as ch:
                stub = pb_grpc.StateStreamServiceStub(ch)
                xs = [rng.normal(size=(1 if i % 2 else 3, 3)).astype(np.float32) for i in range(n)]
                for i in range(n):
                    await stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=f"t{i}"))
                replies = await asyncio.gather(*(stub.Step(pb.StepRequest(
                    session_id=f"t{i}", input=xs[i].ravel(), return_sequences=True)) for i in range(n)))
                return xs, replies

        xs, replies = asyncio.run(run())
    for x, r in zip(xs, replies):
        assert r.rows == len(x) and r.step_count == len(x)
        np.testing.assert_allclose(np.array(r.output), stepped(x)[:, 0], atol=1e-5)
