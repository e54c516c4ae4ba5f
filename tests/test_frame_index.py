"""FrameIndex: a frame of ids seen before resolves in one lookup, and never to a session that left its slot."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from prometheus_client import generate_latest
from reference import stepped

from statestream.server.engine.frames import FrameIndex, frame_key
from statestream.server.engine.sessions import BULK, Cells
from statestream.v1 import statestream_pb2 as pb

N = BULK  # the smallest frame the index keeps
X = np.array([0.1, 0.2, 0.3], dtype=np.float32)


def frame(stub, ids, model="demo", **kw):
    return stub.StepFrame(pb.StepFrameRequest(model=model, session_ids=ids, inputs=np.tile(X, len(ids)), **kw))


def lookups(srv, monkeypatch) -> list:
    """Counts the table's per-id resolutions (find_many) from now on."""
    table = srv.app.table
    real, seen = table.find_many, []

    def counted(ids, owner=None):
        seen.append(len(ids))
        return real(ids, owner)
    monkeypatch.setattr(table, "find_many", counted)
    return seen


def test_a_repeated_frame_resolves_in_one_lookup_with_the_same_answers(inproc, monkeypatch):
    srv = inproc()
    ids = [f"d{i}" for i in range(N)]
    frame(srv.stub, ids, open_if_missing=True)
    seen = lookups(srv, monkeypatch)
    first = frame(srv.stub, ids)  # resolved id by id (the opening frame went through _resolve), then kept
    second = frame(srv.stub, ids)
    assert seen == [N]
    assert len(srv.app.table.frames) == 1 and srv.app.table.frames.held == N
    assert list(first.step_counts) == [2] * N and list(second.step_counts) == [3] * N
    frames = srv.app.table.frames
    assert (frames.hits, frames.misses) == (1, 2)  # the opening frame and the first one missed
    text = generate_latest(srv.app.metrics.registry).decode()  # what /metrics shows
    assert 'statestream_frame_index_lookups_total{result="hit"} 1.0' in text
    assert 'statestream_frame_index_lookups_total{result="miss"} 2.0' in text
    assert f"statestream_frame_index_sessions {float(N)}" in text
    np.testing.assert_allclose(np.array(second.outputs), np.repeat(stepped(np.tile(X, (3, 1)))[-1], N), atol=1e-5)


def test_a_closed_session_is_never_stepped_through_a_kept_frame(inproc, monkeypatch):
    """Closing a member bumps its slab's vacated count: the kept frame is dropped, the next one resolves id by id
    and the closed id is NOT_FOUND; re-opened (a new slot, zero states), it steps from the start."""
    srv = inproc()
    ids = [f"c{i}" for i in range(N)]
    frame(srv.stub, ids, open_if_missing=True)
    frame(srv.stub, ids)  # kept
    srv.stub.CloseSession(pb.CloseSessionRequest(session_id=ids[3]))
    seen = lookups(srv, monkeypatch)
    r = frame(srv.stub, ids)
    assert seen and [e.index for e in r.errors] == [3] and r.errors[0].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    srv.stub.OpenSession(pb.OpenSessionRequest(model="demo", session_id=ids[3]))
    r = frame(srv.stub, ids)
    assert not r.errors and list(r.step_counts) == [4, 4, 4, 1, 4, 4, 4, 4]
    r = frame(srv.stub, ids)  # kept again, with the new session
    assert not r.errors and list(r.step_counts) == [5, 5, 5, 2, 5, 5, 5, 5]


def test_a_kept_frame_keeps_the_model_check_and_tenants_apart(inproc):
    srv = inproc()
    ids = [f"m{i}" for i in range(N)]
    frame(srv.stub, ids, open_if_missing=True)
    frame(srv.stub, ids)  # kept
    with pytest.raises(grpc.RpcError) as e:
        frame(srv.stub, ids, model="nope")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    keys = list(srv.app.table.frames._frames)
    assert keys == [frame_key(None, ids)]  # keyed by owner: another tenant's frame of the same ids is another key
    assert frame_key("a", ids) != frame_key("b", ids)


def test_a_key_names_one_list_of_ids():
    """An id holding the separator can not make another frame's key: the count of ids is part of it."""
    assert frame_key(None, ["a", "b"]) != frame_key(None, ["a\x00b"])
    assert frame_key(None, ["a", "b\x00c"])[2] == frame_key(None, ["a\x00b", "c"])[2]  # the same string ...
    # ... but never equal to the key of n open sessions (no separator inside): n ids, n - 1 separators
    assert frame_key(None, ["a", "b", "c"]) not in (frame_key(None, ["a", "b\x00c"]), frame_key(None, ["a\x00b\x00c"]))


def test_the_index_is_bounded_least_recently_used_first_and_off_at_zero():
    cells = Cells(64)
    index = FrameIndex(limit=20)
    slots = [np.arange(i * 8, i * 8 + 8, dtype=np.intp) for i in range(4)]
    for i in range(2):
        index.put(("o", i), tuple(range(8)), slots[i], cells)
    assert index.get(("o", 0)) is not None  # 0 is now the most recently used
    index.put(("o", 2), tuple(range(8)), slots[2], cells)  # 24 > 20: the least recently used (1) goes
    assert index.get(("o", 1)) is None and index.get(("o", 0)) is not None and index.held == 16
    with pytest.raises(ValueError):
        slots[0][0] = 5  # a kept frame's slots are shared by its later requests: read-only
    index.put(("o", 3), tuple(range(30)), np.arange(30, dtype=np.intp), cells)  # more than the limit: not kept
    assert index.get(("o", 3)) is None and len(index) == 2
    cells.vacated += 1  # a session left a slot of these cells: every frame over them is dropped on sight
    assert index.get(("o", 0)) is None and index.get(("o", 2)) is None and index.held == 0
    off = FrameIndex(limit=0)
    off.put(("o", 0), tuple(range(8)), slots[3], cells)
    assert len(off) == 0


def test_a_zero_frame_index_resolves_every_frame_id_by_id(inproc, monkeypatch):
    srv = inproc(frame_index=0)
    ids = [f"z{i}" for i in range(N)]
    frame(srv.stub, ids, open_if_missing=True)
    seen = lookups(srv, monkeypatch)
    frame(srv.stub, ids)
    frame(srv.stub, ids)
    assert seen == [N, N] and len(srv.app.table.frames) == 0


def test_contiguous_and_first_and_indexes_of_slots():
    from statestream.server.engine.sessions import contiguous, first_slots, indexes

    block = contiguous(np.arange(5, 15, dtype=np.intp))
    assert block == slice(5, 15) and first_slots(block, 3) == slice(5, 8)
    np.testing.assert_array_equal(indexes(block), np.arange(5, 15))
    for scattered in ([5, 6, 8, 9], [6, 5, 7, 8], [5, 5, 6, 7]):   # a gap, out of order, a repeat
        got = contiguous(np.array(scattered, dtype=np.intp))
        assert isinstance(got, np.ndarray) and got.tolist() == scattered
        np.testing.assert_array_equal(first_slots(got, 2), scattered[:2])
    assert isinstance(contiguous(np.array([3], dtype=np.intp)), np.ndarray)   # one session: no block


def test_a_frame_of_consecutive_slots_steps_its_block_in_place_like_any_frame(inproc):
    """Sessions opened together in order sit in consecutive slots: a frame listing them in that order is kept as a
    slice of its slab (no gather, no scatter), one listing them otherwise as slots; both step every session
    exactly as stepping it alone would, and each other's steps are seen."""
    srv = inproc()
    ids = [f"b{i}" for i in range(2 * N)]
    frame(srv.stub, ids, open_if_missing=True)
    frame(srv.stub, ids)                      # resolved id by id, kept
    shuffled = ids[N:] + ids[:N]
    frame(srv.stub, shuffled)
    kept = {tuple(k[2].split("\x00")[:2]): v[1] for k, v in srv.app.table.frames._frames.items()}
    assert isinstance(kept[tuple(ids[:2])], slice) and isinstance(kept[tuple(shuffled[:2])], np.ndarray)
    again = frame(srv.stub, ids)              # through the kept slice
    assert list(again.step_counts) == [4] * (2 * N)
    np.testing.assert_allclose(np.array(again.outputs), np.repeat(stepped(np.tile(X, (4, 1)))[-1], 2 * N), atol=1e-5)
    state = srv.stub.GetState(pb.GetStateRequest(session_id="b3")).state
    assert state.step_count == 4


def test_frames_of_consecutive_slots_share_a_run_and_a_queue_short_of_room_takes_the_first(inproc):
    """Two kept block frames queued together run as one model run (their slots joined); a frame the server's queue
    has room for only in part runs its first entries and refuses the rest, whatever its slots' form."""
    srv = inproc(max_queue_delay=0.2, max_pending=N + N // 2)
    a, b = [f"qa{i}" for i in range(N)], [f"qb{i}" for i in range(N)]
    frame(srv.stub, a, open_if_missing=True)
    frame(srv.stub, b, open_if_missing=True)
    frame(srv.stub, a)
    frame(srv.stub, b)                        # both kept as slices
    stats = srv.app.metrics.models["demo", 1]
    runs = stats.executions
    futures = [srv.stub.StepFrame.future(pb.StepFrameRequest(model="demo", session_ids=ids, inputs=np.tile(X, N)))
               for ids in (a, b)]
    replies = [f.result(10) for f in futures]
    assert stats.executions == runs + 1      # one model run for both
    got = sorted((list(r.step_counts), sorted(e.index for e in r.errors)) for r in replies)
    # one frame whole; of the other only what the queue (N + N/2) had room for, the rest refused
    assert got[1] == ([3] * N, [])
    assert got[0][0][:N // 2] == [3] * (N // 2) and got[0][1] == list(range(N // 2, N))
    for ids in (a, b):
        counts = [srv.stub.GetState(pb.GetStateRequest(session_id=sid)).state.step_count for sid in ids]
        assert counts in ([3] * N, [3] * (N // 2) + [2] * (N // 2))   # refused entries changed nothing


def test_a_frame_that_opens_its_sessions_lays_them_out_as_one_block(inproc):
    """Sessions a frame opens together go onto consecutive slots in its order, even where free slots are scattered
    (here: between the sessions of another frame, closed one in two), so the next frames of that list run on their
    block; a frame that opened only some of its sessions takes the others along. Every answer is as if each session
    were stepped alone."""
    srv = inproc()
    other = [f"o{i}" for i in range(2 * N)]
    frame(srv.stub, other, open_if_missing=True)
    for sid in other[::2]:
        srv.stub.CloseSession(pb.CloseSessionRequest(session_id=sid))   # free slots, one in two
    ids = [f"n{i}" for i in range(2 * N)]
    first = frame(srv.stub, ids, open_if_missing=True)
    again = frame(srv.stub, ids)
    kept = {k[2].split("\x00")[0]: v[1] for k, v in srv.app.table.frames._frames.items()}
    assert isinstance(kept["n0"], slice) and kept["n0"].stop - kept["n0"].start == 2 * N
    slots = [srv.app.table.find(sid).slot for sid in ids]
    assert slots == list(range(slots[0], slots[0] + 2 * N))
    assert list(first.step_counts) == [1] * (2 * N) and list(again.step_counts) == [2] * (2 * N)
    np.testing.assert_allclose(np.array(again.outputs), np.repeat(stepped(np.tile(X, (2, 1)))[-1], 2 * N), atol=1e-5)
    mixed = [*other[1::2], *[f"m{i}" for i in range(N)]]            # N open (scattered), N opened now
    frame(srv.stub, mixed, open_if_missing=True)
    slots = [srv.app.table.find(sid).slot for sid in mixed]
    assert slots == list(range(slots[0], slots[0] + 2 * N))          # laid out too, the open ones moved with them
    moved = frame(srv.stub, mixed)
    assert list(moved.step_counts) == [3] * N + [2] * N               # their states moved with them
    np.testing.assert_allclose(np.array(moved.outputs)[:N], np.repeat(stepped(np.tile(X, (3, 1)))[-1], N), atol=1e-5)


def test_a_slab_with_many_free_slots_leaves_a_new_frame_where_it_was_opened(inproc, monkeypatch):
    """Finding a block sorts a slab's free slots: beyond LAY_OUT_FREE_MAX of them a frame's new sessions stay in
    the slots they were opened in (scattered here), and step as well."""
    from statestream.server.engine import engine

    srv = inproc()
    other = [f"p{i}" for i in range(2 * N)]
    frame(srv.stub, other, open_if_missing=True)
    for sid in other[::2]:
        srv.stub.CloseSession(pb.CloseSessionRequest(session_id=sid))
    assert srv.app.table.slabs["demo", 1].free_slots > 1000   # the first 1024 rows of the slab, mostly free
    monkeypatch.setattr(engine, "LAY_OUT_FREE_MAX", 900)
    ids = [f"q{i}" for i in range(2 * N)]
    frame(srv.stub, ids, open_if_missing=True)
    slots = [srv.app.table.find(sid).slot for sid in ids]
    assert slots != list(range(slots[0], slots[0] + 2 * N))
    assert list(frame(srv.stub, ids).step_counts) == [2] * (2 * N)


def test_a_frame_layout_never_grows_the_slab():
    """alloc_block(n, grow=False) takes a free run or nothing: with every other row free there is no run of 4, the
    slab keeps its capacity and its free rows; regroup without growing then leaves the sessions where they are."""
    from statestream.server.engine.table import Slab

    slab = Slab(width=4, capacity=16)
    taken = [slab.alloc() for _ in range(15)]
    for slot in taken[::2]:
        slab.free(slot)
    free_before = slab.free_slots
    assert slab.alloc_block(4, grow=False) is None
    assert slab.rows.shape[0] == 16 and slab.free_slots == free_before
    assert slab.alloc_block(1, grow=False) in taken[::2] and slab.free_slots == free_before - 1
    assert slab.alloc_block(4) == 16 and slab.rows.shape[0] == 32   # growing (a group's open) takes new rows


def test_a_frame_read_through_from_a_shared_store_is_laid_out_as_one_block(inproc, tmp_path):
    """Two servers on one shared sqlite file: sessions opened on the first are read through by the second's first
    frame of them (into slots scattered by its own closes) and laid out there, so its next frames run on a block."""
    from statestream.server.store.sqlite import SqliteStore

    path = tmp_path / "shared.db"
    a = inproc(store=SqliteStore(str(path), shared=True))
    b = inproc(store=SqliteStore(str(path), shared=True))
    ids = [f"r{i}" for i in range(2 * N)]
    frame(a.stub, ids, open_if_missing=True)
    other = [f"s{i}" for i in range(2 * N)]
    frame(b.stub, other, open_if_missing=True)
    for sid in other[::2]:
        b.stub.CloseSession(pb.CloseSessionRequest(session_id=sid))
    first = frame(b.stub, ids)                      # read through, laid out
    slots = [b.app.table.find(sid).slot for sid in ids]
    assert slots == list(range(slots[0], slots[0] + 2 * N))
    again = frame(b.stub, ids)
    assert list(first.step_counts) == [2] * (2 * N) and list(again.step_counts) == [3] * (2 * N)
    np.testing.assert_allclose(np.array(again.outputs), np.repeat(stepped(np.tile(X, (3, 1)))[-1], 2 * N), atol=1e-5)
