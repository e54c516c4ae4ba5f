"""Limits and back-pressure: each refusal names its limit, and no session is ever half-applied."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
from inproc import InProcessServer, wait_until
from serverproc import DEMO_MODEL, ServerProcess

from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc


def test_message_size_limit():
    with InProcessServer.from_args(DEMO_MODEL, "--max-message-bytes", "2000") as srv, \
            grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="big"))
        try:
            stub.Step(pb.StepRequest(session_id="big", input=np.ones(900, np.float32)))
            raise AssertionError("an oversized message was accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "2000" in e.details()  # the limit and its value
        assert stub.GetState(pb.GetStateRequest(session_id="big")).state.step_count == 0
        assert stub.Step(pb.StepRequest(session_id="big", input=[1, 2, 3])).step_count == 1


async def _burst(target: str, requests) -> list:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        for sid in sorted({r.session_id for r in requests}):
            await stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid))
        results = await asyncio.gather(*(stub.Step(r) for r in requests), return_exceptions=True)
        counts = {}
        for sid in sorted({r.session_id for r in requests}):
            counts[sid] = (await stub.GetState(pb.GetStateRequest(session_id=sid))).state.step_count
        return results, counts


def test_global_pending_queue_limit():
    with InProcessServer.from_args(DEMO_MODEL, "--max-pending", "4", "--max-queue-delay", "0.3") as srv:
        reqs = [pb.StepRequest(session_id=f"g{i}", input=[1, 2, 3]) for i in range(12)]
        results, counts = asyncio.run(_burst(srv.target, reqs))
    refused = [r for r in results if isinstance(r, grpc.RpcError)]
    assert refused and all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
    assert "server queue is full: 4 steps pending (--max-pending)" in refused[0].details()
    applied = sum(1 for r in results if not isinstance(r, grpc.RpcError))
    assert applied >= 4 and sum(counts.values()) == applied  # refused steps changed nothing


def test_per_session_pending_limit():
    with InProcessServer.from_args(DEMO_MODEL, "--max-pending-per-session", "3", "--max-queue-delay", "0.3") as srv:
        reqs = [pb.StepRequest(session_id="p", input=[1, 2, 3]) for _ in range(10)]
        results, counts = asyncio.run(_burst(srv.target, reqs))
    refused = [r for r in results if isinstance(r, grpc.RpcError)]
    assert refused and all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
    assert "the limit is 3 (--max-pending-per-session)" in refused[0].details()
    assert counts["p"] == len(results) - len(refused)


def _exists(stub, sid: str) -> bool:
    try:
        stub.GetState(pb.GetStateRequest(session_id=sid), timeout=5)
        return True
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
        return False


def test_sigterm_lets_in_flight_calls_finish():
    srv = ServerProcess(DEMO_MODEL, "--max-queue-delay", "0.5", "--grace", "5").start()
    try:
        with grpc.insecure_channel(srv.target) as ch:
            stub = pb_grpc.StateStreamServiceStub(ch)
            # open_if_missing: the step opens the session after the server admitted it (past its draining check),
            # so once GetState finds the session the step is in: SIGTERM comes after it, never before
            call = stub.Step.future(pb.StepRequest(session_id="late", model="demo", open_if_missing=True,
                                                   input=[1, 2, 3]))
            wait_until(lambda: _exists(stub, "late"))
            srv.proc.send_signal(15)
            assert call.result(timeout=10).step_count == 1  # queued before SIGTERM: answered
        assert srv.proc.wait(20) == 0
    finally:
        srv.kill()


def test_frame_over_the_queue_limit_refuses_those_entries_only():
    # a queue delay keeps the units queued (without one, the memory store runs each unit at once in its caller)
    with InProcessServer.from_args(DEMO_MODEL, "--max-pending", "4", "--max-batch-size", "2",
                                   "--max-queue-delay", "0.05") as srv, \
            grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        ids = [f"q{i}" for i in range(6)]
        r = stub.StepFrame(pb.StepFrameRequest(model="demo", session_ids=ids, inputs=np.ones(18, np.float32),
                                               open_if_missing=True))
        assert [e.index for e in r.errors] == [4, 5]
        assert all(e.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] for e in r.errors)
        assert "--max-pending" in r.errors[0].error.message
        assert list(r.step_counts) == [1, 1, 1, 1, 0, 0]
        for sid in ids[4:]:  # refused entries opened nothing
            try:
                stub.GetState(pb.GetStateRequest(session_id=sid))
                raise AssertionError(f"{sid} was left open")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND
