"""Hostile conditions (issue 17), engine side: a refused request changes nothing, a retry must repeat its input,
no request or stream can grow the server or stall other clients without limit, groups do not leak, a shared
store's full cache evicts instead of refusing. In-process servers unless a process must die."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from inproc import InProcessServer
from reference import stepped
from serverproc import DEMO_MODEL, ServerProcess

from statestream.inference import grpc_service_pb2 as ipb
from statestream.inference import grpc_service_pb2_grpc as ipb_grpc
from statestream.server.api.kserve import STREAM_WINDOW
from statestream.server.engine.types import StepRequest
from statestream.server.store.sqlite import SqliteStore
from statestream.v1 import statestream_pb2 as pb

X = np.array([[0.1, 0.2, 0.3], [0.4, -0.5, 0.6], [0.7, 0.8, -0.9], [0.2, 0.2, 0.2]], dtype=np.float32)
C = grpc.StatusCode


def code_of(fn, *args):
    try:
        fn(*args)
    except grpc.RpcError as e:
        return e.code(), e.details()
    return C.OK, ""


# -- KServe ------------------------------------------------------------------------------------------------------


def infer_req(sid: str, x, *, start=False, end=False, number=None, uint=False) -> ipb.ModelInferRequest:
    req = ipb.ModelInferRequest(model_name="demo", raw_input_contents=[np.asarray(x, np.float32).tobytes()])
    req.inputs.add(name="input", datatype="FP32", shape=[1, 1, 3])
    req.parameters["sequence_id"].string_param = sid
    if start:
        req.parameters["sequence_start"].bool_param = True
    if end:
        req.parameters["sequence_end"].bool_param = True
    if number is not None:
        if uint:
            req.parameters["sequence_number"].uint64_param = number
        else:
            req.parameters["sequence_number"].int64_param = number
    return req


@pytest.fixture
def kserve(inproc):
    srv = inproc()
    return srv, ipb_grpc.GRPCInferenceServiceStub(srv.channel)


def counters(srv, sid):
    st = srv.stub.GetState(pb.GetStateRequest(session_id=sid)).state
    return st.step_count, st.last_sequence_number, [v for layer in st.layers for v in (*layer.h, *layer.c)]


@pytest.mark.parametrize("number, uint, code", [(0, False, C.INVALID_ARGUMENT), (7, False, C.FAILED_PRECONDITION),
                                                (2**63, True, C.INVALID_ARGUMENT),
                                                (2**64 - 1, True, C.INVALID_ARGUMENT)])
def test_a_refused_sequence_start_changes_nothing(kserve, number, uint, code):
    srv, triton = kserve
    for i in range(3):
        triton.ModelInfer(infer_req("s", X[i], start=i == 0, number=i + 1))
    before = counters(srv, "s")
    assert before[:2] == (3, 3)
    got, msg = code_of(triton.ModelInfer, infer_req("s", X[3], start=True, number=number, uint=uint))
    assert got == code, msg
    assert counters(srv, "s") == before
    got, _ = code_of(triton.ModelInfer, infer_req("new", X[3], start=True, number=number, uint=uint))
    assert got == code
    assert code_of(srv.stub.GetState, pb.GetStateRequest(session_id="new"))[0] == C.NOT_FOUND  # nothing opened


def test_a_start_numbered_1_restarts_a_sequence_whose_last_number_was_1_unless_it_is_its_retry(kserve):
    srv, triton = kserve
    a = triton.ModelInfer(infer_req("r", X[0], start=True, number=1))
    again = triton.ModelInfer(infer_req("r", X[0], start=True, number=1))  # the same start: a retry, replayed
    assert again.parameters["replayed"].bool_param and again.raw_output_contents == a.raw_output_contents
    fresh = triton.ModelInfer(infer_req("r", X[1], start=True, number=1))  # a new sequence: restarts from zero
    assert not fresh.parameters["replayed"].bool_param and fresh.parameters["step_count"].int64_param == 1
    np.testing.assert_allclose(np.frombuffer(fresh.raw_output_contents[0], "<f4"), stepped(X[1:2])[-1], atol=1e-5)


def test_kserve_input_with_raw_and_typed_contents_is_refused(kserve):
    _, triton = kserve
    req = infer_req("both", X[0], start=True)
    req.inputs[0].contents.fp32_contents.extend(X[1].tolist())
    got, msg = code_of(triton.ModelInfer, req)
    assert got == C.INVALID_ARGUMENT and "both raw_input_contents and typed contents" in msg


def test_a_stream_whose_client_never_reads_stops_being_read(kserve):
    """Back-pressure on ModelStreamInfer: with nothing read, the server takes at most its window of requests
    (running or answered but unsent) from the stream, however many the client writes."""
    srv, _ = kserve
    service = srv.app.triton
    sent = STREAM_WINDOW * 3
    pulled = 0

    async def requests():
        nonlocal pulled
        for i in range(sent):
            pulled += 1
            yield infer_req(f"w{i % 50}", X[0], start=i < 50)

    class Context:  # what the handler reads of a grpc.aio context
        def invocation_metadata(self):
            return ()

        def time_remaining(self):
            return None

    async def scenario():
        replies = service.ModelStreamInfer(requests(), Context())
        first = await replies.__anext__()  # read one reply, then never again
        assert first.error_message == "", first.error_message
        stable = 0
        last = -1
        while stable < 200:  # the reader blocks on the window: nothing more is pulled, turn after turn
            await asyncio.sleep(0)
            stable = stable + 1 if pulled == last else 0
            last = pulled
        await replies.aclose()
        return pulled

    got = srv.call(scenario())
    assert got <= STREAM_WINDOW + 2, f"the server read {got} of {sent} requests without sending their replies"


# -- retries must repeat their input ------------------------------------------------------------------------------


def test_a_retried_sequence_number_with_other_input_is_refused_and_changes_nothing(inproc):
    srv = inproc()
    stub = srv.stub
    stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="fp"))
    first = stub.Step(pb.StepRequest(session_id="fp", input=X[0], sequence_number=1))
    same = stub.Step(pb.StepRequest(session_id="fp", input=X[0], sequence_number=1))
    assert same.replayed and same.output == first.output
    before = counters(srv, "fp")
    got, msg = code_of(stub.Step, pb.StepRequest(session_id="fp", input=X[1], sequence_number=1))
    assert got == C.FAILED_PRECONDITION and "other input" in msg
    got, msg = code_of(stub.Step, pb.StepRequest(session_id="fp", input=np.tile(X[0], 2), sequence_number=1))
    assert got == C.FAILED_PRECONDITION and "other input" in msg  # other T
    r = stub.StepFrame(pb.StepFrameRequest(model="demo", session_ids=["fp"], inputs=X[2], sequence_numbers=[1]))
    assert r.errors[0].error.code == C.FAILED_PRECONDITION.value[0]
    assert counters(srv, "fp") == before


# -- one request cannot take the server -----------------------------------------------------------------------------


def test_entries_per_frame_and_members_per_group_are_limited(inproc):
    srv = inproc(max_entries=64)
    got, msg = code_of(srv.stub.StepFrame, pb.StepFrameRequest(model="demo", session_ids=[f"e{i}" for i in range(65)],
                                                               inputs=np.zeros(65 * 3, np.float32)))
    assert got == C.RESOURCE_EXHAUSTED and "--max-entries" in msg
    got, msg = code_of(srv.stub.OpenGroup, pb.OpenGroupRequest(model="demo", size=65))
    assert got == C.RESOURCE_EXHAUSTED and "--max-entries" in msg
    assert srv.run(lambda: len(srv.app.table)) == 0


def test_a_big_frame_of_unknown_ids_yields_the_loop_while_it_resolves(inproc):
    """Per-entry work is bounded per loop turn: while a frame of 16,384 unknown ids is resolved, other tasks run
    (another client's steps are not stalled behind it)."""
    srv = inproc()
    n = 16_384
    engine = srv.app.engine

    async def scenario():
        turns = 0
        done = False

        async def ticker():
            nonlocal turns
            while not done:
                turns += 1
                await asyncio.sleep(0)

        tick = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        start = turns
        reply = await engine.step(StepRequest(None, np.zeros((n, 1, 3), np.float32), model="demo",
                                              ids=[f"nobody-{i}" for i in range(n)]))
        during = turns - start
        done = True
        await tick
        return reply, during

    reply, during = srv.call(scenario())
    assert len(reply.errors) == n and all(e.code == C.NOT_FOUND for e in reply.errors.values())
    assert during >= n // 256 - 1, f"the loop ran other tasks {during} times while resolving {n} entries"


# -- groups ----------------------------------------------------------------------------------------------------------


def test_groups_whose_members_are_gone_are_freed_and_groups_are_bounded(inproc):
    srv = inproc(max_groups=3, idle_timeout=5.0)
    stub = srv.stub
    gids = [stub.OpenGroup(pb.OpenGroupRequest(model="demo", size=2)).group_id for _ in range(3)]
    got, msg = code_of(stub.OpenGroup, pb.OpenGroupRequest(model="demo", size=2))
    assert got == C.RESOURCE_EXHAUSTED and "--max-groups" in msg
    # the members of one group are closed one by one (not through CloseGroup): that group is gone
    members = stub.StepGroup(pb.StepGroupRequest(group_id=gids[0], inputs=np.zeros(6, np.float32)))
    assert members.step_count == 1
    for s in srv.run(lambda: [m.id for m in srv.app.engine.groups.get(gids[0], None).members]):
        stub.CloseSession(pb.CloseSessionRequest(session_id=s))
    assert code_of(stub.StepGroup, pb.StepGroupRequest(group_id=gids[0], inputs=np.zeros(6, np.float32)))[0] == \
        C.NOT_FOUND
    stub.OpenGroup(pb.OpenGroupRequest(model="demo", size=2))  # its place is free again
    assert srv.run(lambda: len(srv.app.engine.groups)) == 3


def test_a_group_re_opens_over_its_members_after_a_kill_9_on_sqlite(tmp_path):
    db = tmp_path / "g.db"
    ids = [f"dev-{i}" for i in range(4)]
    xs = np.random.default_rng(1).normal(size=(2, 4, 3)).astype(np.float32)
    with ServerProcess(DEMO_MODEL, "--state-store", f"sqlite:{db}") as srv, grpc.insecure_channel(srv.target) as ch:
        from statestream.v1 import statestream_pb2_grpc as pb_grpc
        stub = pb_grpc.StateStreamServiceStub(ch)
        g = stub.OpenGroup(pb.OpenGroupRequest(model="demo", session_ids=ids, group_id="gw"))
        stub.StepGroup(pb.StepGroupRequest(group_id=g.group_id, inputs=xs[0].ravel()))
        srv.kill()
    with ServerProcess(DEMO_MODEL, "--state-store", f"sqlite:{db}") as srv, grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        again = stub.OpenGroup(pb.OpenGroupRequest(model="demo", session_ids=ids, group_id="gw"))
        assert list(again.session_ids) == ids
        r = stub.StepGroup(pb.StepGroupRequest(group_id="gw", inputs=xs[1].ravel()))
        for i in range(4):
            np.testing.assert_allclose(r.outputs[i], stepped(xs[:, i])[-1], atol=1e-5)
        assert stub.GetState(pb.GetStateRequest(session_id=ids[0])).state.step_count == 2


# -- a shared store's cache ----------------------------------------------------------------------------------------


def test_a_full_cache_of_a_shared_store_evicts_its_least_recently_used_idle_session(tmp_path):
    store = SqliteStore(str(tmp_path / "shared.db"), shared=True)
    with InProcessServer(store=store, max_sessions=2) as srv:
        stub = srv.stub
        for sid in ("a", "b", "c"):  # the third open evicts the idle "a" from the cache (the store keeps it)
            stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=sid))
            stub.Step(pb.StepRequest(session_id=sid, input=X[0]))
        assert srv.run(lambda: len(srv.app.table)) == 2
        for sid in ("a", "b", "c"):  # each reads through again, evicting another
            r = stub.Step(pb.StepRequest(session_id=sid, input=X[1]))
            assert r.step_count == 2
            np.testing.assert_allclose(r.output, stepped(X[:2])[-1], atol=1e-5)
        assert srv.run(lambda: srv.app.table.evictions) >= 3


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_frame_of_700k_unknown_ids_is_refused_at_once_and_other_clients_step_on():
    """The adversarial frame of the review (700k unknown ids, 13 MB): RESOURCE_EXHAUSTED naming --max-entries,
    the server's memory barely moves, and another client's steps go on. A subprocess: if this takes the server
    down, it must not take the test run with it."""
    from statestream.v1 import statestream_pb2_grpc as pb_grpc

    n = 700_000
    ids = [f"{i:x}" for i in range(n)]  # 13 MB with the inputs, under the 16 MB message limit
    with ServerProcess(DEMO_MODEL) as srv, grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id="bystander"))
        before = rss_mb(srv.proc.pid)
        big = stub.StepFrame.future(pb.StepFrameRequest(model="demo", session_ids=ids,
                                                        inputs_raw=np.zeros(n * 3, np.float32).tobytes()), timeout=60)
        steps = 0
        while not big.done():  # another client steps while the frame is in the server
            stub.Step(pb.StepRequest(session_id="bystander", input=X[0]), timeout=10)
            steps += 1
        code, msg = code_of(big.result)
        assert code == C.RESOURCE_EXHAUSTED and "--max-entries" in msg
        assert rss_mb(srv.proc.pid) - before < 200, "one refused frame grew the server by 200 MB or more"
        assert stub.Step(pb.StepRequest(session_id="bystander", input=X[0])).step_count == steps + 1


def test_one_big_group_step_is_bounded_in_memory():
    """The review's big group (65,536 members x T=20) grew the server by 770 MB. Members are bounded by
    --max-entries, a request's session-timesteps by --max-request-timesteps; within them, repeated big group
    steps keep the server's memory flat."""
    from statestream.v1 import statestream_pb2_grpc as pb_grpc

    with ServerProcess(DEMO_MODEL, "--max-sessions", "70000") as srv, grpc.insecure_channel(srv.target) as ch:
        stub = pb_grpc.StateStreamServiceStub(ch)
        got, msg = code_of(stub.OpenGroup, pb.OpenGroupRequest(model="demo", size=65_536))
        assert got == C.RESOURCE_EXHAUSTED and "--max-entries" in msg
        g = stub.OpenGroup(pb.OpenGroupRequest(model="demo", size=16_384))
        x = np.random.default_rng(0).normal(size=(16_384, 5, 3)).astype(np.float32)
        got, msg = code_of(stub.StepGroup, pb.StepGroupRequest(group_id=g.group_id, timesteps=5,
                                                               inputs_raw=x.tobytes()))
        assert got == C.RESOURCE_EXHAUSTED and "--max-request-timesteps" in msg
        x = x[:, :4]
        rss = []
        for _ in range(4):
            stub.StepGroup(pb.StepGroupRequest(group_id=g.group_id, timesteps=4, inputs_raw=x.tobytes()))
            rss.append(rss_mb(srv.proc.pid))
        assert rss[-1] - rss[1] < 50, f"memory grew across identical group steps: {rss} MB"
        assert stub.GetState(pb.GetStateRequest(session_id=g.session_ids[0])).state.step_count == 16
