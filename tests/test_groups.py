"""Session groups: one message steps N sessions whose state rows are contiguous; members stay ordinary sessions."""

from __future__ import annotations

import numpy as np
import pytest
from inproc import InProcessServer
from reference import Reference
from serverproc import DEMO_MODEL

from statestream.client import Client, FailedPrecondition, InvalidArgument, NotFound
from statestream.server.engine.table import Slab
from statestream.v1 import statestream_pb2 as pb

F, UNITS = 3, 16


@pytest.fixture(scope="module")
def server():
    with InProcessServer.from_args(DEMO_MODEL, "--metrics-port", "-1", "--max-sessions", "20000") as srv:
        yield srv


@pytest.fixture()
def client(server):
    with Client(server.target) as c:
        yield c


def state_of(session) -> np.ndarray:
    st = session.get_state()
    return np.concatenate([st.states[l][k] for l in ("lstm1", "lstm2") for k in ("h", "c")])


def ref_state(ref: Reference, i: int) -> np.ndarray:
    return np.concatenate([ref.states[f"state_in.{l}.{k}"][i] for l in ("lstm1", "lstm2") for k in ("h", "c")])


@pytest.mark.parametrize("n,T", [(300, 1), (1500, 3)])  # 1500 x 3 > --inline-max-batch: the held, executor path
def test_group_steps_equal_per_session_references(client, n, T):
    xs = np.random.default_rng(n).normal(size=(3, n, T, F)).astype(np.float32)
    ref = Reference(n)
    with client.group("demo", n) as g:
        assert len(g) == n and len(set(g.session_ids)) == n
        for k in range(3):
            y = g.step(xs[k], return_sequences=True)
            assert y.shape == (n, T, 1)
            want = np.stack([ref.step(xs[k][:, t]) for t in range(T)], axis=1)
            np.testing.assert_allclose(y, want, atol=1e-5)
        for i in (0, n // 2, n - 1):  # members are ordinary sessions: GetState works and matches
            m = g.sessions[i].get_state()
            assert m.step_count == 3 * T and m.model == "demo"
            np.testing.assert_allclose(state_of(g.sessions[i]), ref_state(ref, i), atol=1e-5)


def test_masked_members_keep_their_state(client):
    n = 64
    xs = np.random.default_rng(1).normal(size=(2, n, F)).astype(np.float32)
    masked = [0, 5, 63]
    with client.group("demo", n) as g:
        g.step(xs[0])
        before = {i: (state_of(g.sessions[i]), g.sessions[i].get_state().step_count) for i in masked + [1]}
        nan = xs[1].copy()
        nan[5] = np.nan  # a masked entry's values are not used, not even checked
        y = g.step(nan, masked=masked)
        assert (y[masked] == 0).all() and (y[1] != 0).all()
        for i in masked:
            st, count = before[i]
            assert state_of(g.sessions[i]).view(np.uint32).tolist() == st.view(np.uint32).tolist()
            assert g.sessions[i].get_state().step_count == count == 1
        assert g.sessions[1].get_state().step_count == 2
        assert not np.array_equal(state_of(g.sessions[1]), before[1][0])
        with pytest.raises(InvalidArgument, match="masked index 64 is out of range; the group has 64"):
            g.step(xs[1], masked=[64])
        with pytest.raises(InvalidArgument, match="NaN"):
            g.step(nan)


def test_group_step_is_exactly_once(client):
    n = 32
    xs = np.random.default_rng(2).normal(size=(3, n, F)).astype(np.float32)
    with client.group("demo", n) as g:
        a = g.step(xs[0], sequence_number=1)
        st = state_of(g.sessions[7])
        again = g.step(xs[0], sequence_number=1)  # a retry replays the recorded result
        assert a.view(np.uint32).tolist() == again.view(np.uint32).tolist()
        with pytest.raises(FailedPrecondition, match="other input"):  # a retry must repeat its input
            g.step(xs[1], sequence_number=1)
        assert np.array_equal(state_of(g.sessions[7]), st) and g.sessions[7].get_state().step_count == 1
        with pytest.raises(FailedPrecondition, match="out of order .*expected 2"):
            g.step(xs[1], sequence_number=3)
        g.step(xs[1], sequence_number=2)
        with pytest.raises(FailedPrecondition, match="stale .*expected 3"):
            g.step(xs[1], sequence_number=1)
        assert g.sessions[7].get_state().step_count == 2


def test_members_are_ordinary_sessions(client):
    n = 8
    ids = [f"gw-dev-{i}" for i in range(n)]
    with client.group("demo", session_ids=ids, group_id="gw-1") as g:
        assert g.session_ids == ids and g.id == "gw-1"
        x = np.random.default_rng(3).normal(size=(n, F)).astype(np.float32)
        g.step(x)
        # one member stepped alone, and one set from saved states: the next group step starts from there
        g.sessions[2].step(x[2])
        saved = g.sessions[0].get_state()
        ref = Reference(n)
        ref.step(x)
        ref_1 = ref.step(x)  # what two group steps give
        y = g.step(x)
        np.testing.assert_allclose(y[[0, 1]], ref_1[[0, 1]], atol=1e-5)
        assert g.sessions[2].get_state().step_count == 3
        g.sessions[0].set_state(saved)
        y = g.step(x)
        np.testing.assert_allclose(y[0], ref_1[0], atol=1e-5)  # restored to after step 1, stepped with x again
        with pytest.raises(Exception, match="already open"):
            client.group("demo", session_ids=["gw-dev-0"])
        with pytest.raises(Exception, match="already open"):
            client.group("demo", 2, group_id="gw-1")
        with pytest.raises(InvalidArgument, match="expects N x T x F x 4 = 8 x 1 x 3 x 4 = 96 bytes"):
            g.step(x[:7])
    with pytest.raises(NotFound):  # closed with the group
        client.attach(ids[0], "demo").get_state()


def test_closed_member_breaks_the_group_and_keep_sessions(client):
    x = np.zeros((4, F), np.float32)
    g = client.group("demo", 4)
    g.step(x)  # every member found in its slot: later steps trust that until a session of the slab leaves a slot
    g.sessions[1].close()
    with pytest.raises(NotFound, match="member 1 .* was closed or expired"):
        g.step(x)
    g.step(x, masked=[1])  # a closed member that is masked is not read for anything kept
    assert g.sessions[2].get_state().step_count == 2
    g.close()
    g = client.group("demo", 4)
    g.step(x)
    assert g.close(keep_sessions=True) == 1
    assert g.sessions[3].get_state().step_count == 1  # still open, an ordinary session
    with pytest.raises(NotFound, match="unknown group"):
        g.step(x)


def test_a_group_whose_members_all_closed_is_gone_after_steps_that_trusted_their_slots(client):
    """Groups.get skips the members' phases while no session of the slab left a slot since the group last found
    them all (its steps trust that); closing every member moves the slab on, and the group is gone."""
    x = np.zeros((3, F), np.float32)
    g = client.group("demo", 3)
    g.step(x)
    g.step(x)
    for s in g.sessions:
        s.close()
    with pytest.raises(NotFound, match="unknown group"):
        g.step(x)


def test_slab_blocks_are_contiguous_and_reuse_free_runs():
    slab = Slab(4, capacity=16)
    singles = [slab.alloc() for _ in range(6)]
    assert singles == list(range(1, 7))  # slot 0 is never a session's (a closed session that left its slot names it)
    start = slab.alloc_block(8)
    assert start == 7
    for s in (2, 3, 4):
        slab.free(s)
    assert slab.alloc_block(3) == 2  # a free run is reused
    big = slab.alloc_block(20)  # no run of 20: new rows at the end
    assert big == 16 and slab.rows.shape[0] >= 36
    assert slab.alloc() not in range(big, big + 20)
    slab.rows[big:big + 20] = 1.0
    assert (slab.rows[big:big + 20] == 1.0).all()


def test_groups_with_a_durable_store_survive_a_restart(tmp_path):
    """sqlite: members are written by every group step (held, one commit), so a restarted server has them."""
    n = 16
    args = ("--metrics-port", "-1", "--state-store", f"sqlite:{tmp_path / 'state.db'}")
    xs = np.random.default_rng(4).normal(size=(2, n, F)).astype(np.float32)
    ref = Reference(n)
    with InProcessServer.from_args(DEMO_MODEL, *args) as srv, Client(srv.target) as c:
        g = c.group("demo", n, group_id="durable")
        for x in xs:
            np.testing.assert_allclose(g.step(x), ref.step(x), atol=1e-5)
        ids = g.session_ids
    with InProcessServer.from_args(DEMO_MODEL, *args) as srv, Client(srv.target) as c:
        s = c.attach(ids[9], "demo")
        assert s.get_state().step_count == 2
        np.testing.assert_allclose(state_of(s), ref_state(ref, 9), atol=1e-5)


def test_open_group_refusals(client):
    with pytest.raises(InvalidArgument, match="1 to \\d+ members; got 0"):
        client.group("demo")
    with pytest.raises(InvalidArgument, match="size is 3 but 2 session_ids"):
        client.group("demo", 3, session_ids=["a-1", "a-2"])
    with pytest.raises(InvalidArgument, match="duplicates"):
        client.group("demo", session_ids=["d-1", "d-1"])
    with pytest.raises(InvalidArgument, match="group_id must be 1 to 128 printable"):
        client.group("demo", 2, group_id="x" * 129)
    with pytest.raises(NotFound, match="unknown model"):
        client.group("nope", 2)
    with pytest.raises(NotFound, match="unknown group"):
        client.call("StepGroup", pb.StepGroupRequest(group_id="never-opened", inputs=[0, 0, 0]))
    assert client.attach("a-1", "demo") and not _is_open(client, "a-1")  # a refused group opened nothing


def _is_open(client, sid: str) -> bool:
    try:
        client.attach(sid, "demo").get_state()
        return True
    except NotFound:
        return False
