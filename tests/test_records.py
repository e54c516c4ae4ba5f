"""Records (a commit by column) as a sequence of SessionRecords, and Persistence.commit of a run with closed entries."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from statestream.server.store.base import CLOSED, Records, SessionRecord
from statestream.server.store.persistence import Persistence
from statestream.server.store.sqlite import SqliteStore


def rec(sid: str, version: int = 2, model_version: int = 1, last: bool = True) -> SessionRecord:
    state = np.arange(4, dtype=np.float32) + len(sid)
    out = np.full((2, 3), 0.5, np.float32) if last else None
    return SessionRecord(sid, "demo", None if sid != "b" else "t", state, 7, 3, 60.0, time.time() + 60, out,
                         state.copy() if last else None, 6, version, 99, model_version, "h")


def test_records_of_session_records_give_them_back():
    recs = [rec("a"), rec("b", last=False), rec("c", version=5)]
    batch = Records.of(recs)
    assert Records.of(batch) is batch and len(batch) == 3
    for got, want in zip(batch, recs):
        assert got == SessionRecord(**{**want.__dict__, "state": got.state, "last_output": got.last_output,
                                       "last_state": got.last_state})
        assert got.state.tobytes() == want.state.tobytes()
        assert (got.last_output is None) == (want.last_output is None)
    taken = batch.take([2, 0])
    assert [r.id for r in taken] == ["c", "a"] and [r.version for r in taken] == [5, 2]


def test_records_of_several_model_versions_are_refused():
    with pytest.raises(ValueError, match="several model versions"):
        Records.of([rec("a"), rec("b", model_version=2)])


def test_persistence_commit_writes_all_but_the_closed_entries_and_says_closed_for_them(tmp_path):
    store = SqliteStore(str(tmp_path / "s.db"))
    p = Persistence(store)

    async def go():
        for sid in "abc":
            assert await p.create(rec(sid, version=1))
        assert await p.commit(Records.of([rec("a"), rec("b"), rec("c")]), closed=[1]) == ["ok", CLOSED, "ok"]
        got = {sid: r.version for sid, r in zip("abc", await p.store.fetch_many([(None, "a"), ("t", "b"), (None, "c")]))}
        assert got == {"a": 2, "b": 1, "c": 2}   # b's session was closed: not written
        assert await p.commit(Records.of([rec("a", 3), rec("b", 2)]), closed=[0, 1]) == [CLOSED, CLOSED]
        assert await p.commit(Records.of([rec("a", 3), rec("b", 2)])) == ["ok", "ok"]
    asyncio.run(go())
    store.close()
