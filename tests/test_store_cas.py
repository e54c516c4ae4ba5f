"""The store protocol against a real redis-server and a real sqlite file: CAS, create, expiry, fetch, outages."""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import numpy as np
import pytest
import redisproc
from redisproc import RedisProcess

from statestream.contract.errors import Unavailable
from statestream.server.store.base import Records, SessionRecord
from statestream.server.store.memory import MemoryStore
from statestream.server.store.redis import RedisStore
from statestream.server.store.spec import check_spec, open_store
from statestream.server.store.sqlite import SqliteStore

RNG = np.random.default_rng(7)
redis_proc = redisproc.redis_proc  # the fixture, for this module's tests


def record(sid="s1", owner=None, version=1, timeout=60.0, steps=0, seq=0, last=True, fp=None) -> SessionRecord:
    state = RNG.standard_normal(32).astype(np.float32)
    state[3] = np.float32(-0.0)
    out = RNG.standard_normal((4, 3)).astype(np.float32) if last else None
    fp = int(RNG.integers(0, 2**64, dtype=np.uint64)) if fp is None else fp
    return SessionRecord(sid, "demo", owner, state, steps, seq, timeout, time.time() + timeout, out,
                         state.copy() if last else None, steps, version, fp)


def same(a: SessionRecord, b: SessionRecord) -> None:
    """Equal field by field; float arrays bit for bit."""
    for f in ("id", "model", "owner", "step_count", "last_seq", "timeout", "last_step_count", "version", "last_fp"):
        assert getattr(a, f) == getattr(b, f), f
    for f in ("state", "last_output", "last_state"):
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None) == (y is None), f
        if x is not None:
            assert x.dtype == y.dtype == np.float32 and x.shape == y.shape and x.tobytes() == y.tobytes(), f
    assert abs(a.expires_at - b.expires_at) < 1.0


def bumped(rec: SessionRecord, version: int | None = None) -> SessionRecord:
    """The record after one more step (a new version)."""
    new = SessionRecord(**{**rec.__dict__})
    new.state = rec.state + 1
    new.step_count += 1
    new.last_seq += 1
    new.last_fp = (rec.last_fp * 31 + 7) % 2**64
    new.version = rec.version + 1 if version is None else version
    new.expires_at = time.time() + rec.timeout
    return new


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SqliteStore(str(tmp_path / "s.db"), shared=True)
        yield s
        s.close()
        return
    with RedisProcess() as r:
        yield RedisStore(r.url)


def run(coro):
    return asyncio.run(coro)


def test_create_fetch_round_trip_bit_exact(store):
    async def go():
        recs = [record("a", fp=2**64 - 1), record("a", owner="tenant-1", fp=2**63), record("b", last=False, fp=0),
                record("ü-☃ id", owner="t:2")]
        assert [await store.create(r) for r in recs] == [True] * 4
        for r in recs:
            same(await store.fetch(r.owner, r.id), r)
        assert await store.fetch(None, "nope") is None
        assert await store.fetch("tenant-2", "a") is None   # ids are per owner
        assert await store.create(record("a", version=1)) is False  # exists: nothing changes
        same(await store.fetch(None, "a"), recs[0])
        many = await store.fetch_many([(r.owner, r.id) for r in recs] + [(None, "nope")])
        for got, r in zip(many, recs):
            same(got, r)
        assert many[-1] is None and await store.fetch_many([]) == []
    run(go())


def test_commit_cas_ok_conflict_missing(store):
    async def go():
        a, b = record("a"), record("b")
        await store.create(a)
        await store.create(b)
        a2, b2 = bumped(a), bumped(b)
        assert await store.commit([a2, b2]) == ["ok", "ok"]
        same(await store.fetch(None, "a"), a2)
        stale = bumped(a)                      # a writer that still has version 1: another process wrote 2
        stale.state = stale.state * 3
        a3 = bumped(a2)
        ghost = record("never-opened", version=2)
        assert await store.commit([stale, a3, ghost]) == ["conflict", "ok", "missing"]
        same(await store.fetch(None, "a"), a3)       # the stale write changed nothing
        assert await store.commit([bumped(a2)]) == ["conflict"]   # same version again, another write
        await store.delete([(None, "a")])
        assert await store.commit([bumped(a3)]) == ["missing"]
        assert await store.fetch(None, "a") is None
        assert await store.create(a) is True           # a closed id can be opened again
        await store.delete([])
        assert await store.commit([]) == []
    run(go())


def test_expired_session_is_missing(store):
    async def go():
        short = record("short", timeout=0.3)
        await store.create(short)
        assert await store.commit([bumped(short)]) == ["ok"]
        # the expiry itself is the subject (Redis's TTL, sqlite's wall-clock expires_at): poll, with a bound
        end = time.monotonic() + 10
        while await store.fetch(None, "short") is not None:
            assert time.monotonic() < end, "the record never expired"
            await asyncio.sleep(0.02)
        assert await store.commit([bumped(bumped(short))]) == ["missing"]
        assert await store.create(record("short")) is True   # the id is free again
    run(go())


def test_redis_ttl_is_the_idle_timeout_refreshed_by_every_write(redis_proc):
    async def go():
        store = RedisStore(redis_proc.url)
        rec = record("t", timeout=100.0)
        rec.expires_at = time.time() + 40
        await store.create(rec)
        r = redis_proc.client()
        key = b"statestream:s:\x00t"
        assert 38_000 < r.pttl(key) <= 40_000
        assert await store.commit([bumped(rec)]) == ["ok"]      # a step: the full idle timeout again
        assert 98_000 < r.pttl(key) <= 100_000
        assert r.hget(key, "v") == b"2"
        await store.aclose()
    run(go())


def test_redis_script_flush_reloads_the_script(redis_proc):
    async def go():
        store = RedisStore(redis_proc.url)
        recs = [record(f"f{i}") for i in range(5)]
        for r in recs:
            await store.create(r)
        recs = [bumped(r) for r in recs]
        assert await store.commit(recs) == ["ok"] * 5
        redis_proc.client().script_flush()
        recs = [bumped(r) for r in recs]
        assert await store.commit(recs) == ["ok"] * 5
        redis_proc.client().script_flush()
        assert await store.create(record("after-flush")) is True
        for r in recs:
            same(await store.fetch(None, r.id), r)
        await store.aclose()
    run(go())


def test_redis_down_is_unavailable_and_nothing_is_applied(redis_proc):
    async def go():
        store = RedisStore(redis_proc.url, connect_timeout=0.5)
        rec = record("d")
        await store.create(rec)
        redis_proc.kill()
        for call in (store.commit([bumped(rec)]), store.fetch(None, "d"), store.create(record("e")),
                     store.delete([(None, "d")])):
            with pytest.raises(Unavailable) as e:
                await call
            assert f"state store redis://127.0.0.1:{redis_proc.port}/0 is unreachable" in e.value.message
            assert "nothing was applied" in e.value.message
        redis_proc.start()       # AOF: the session comes back as it was acknowledged
        same(await store.fetch(None, "d"), rec)
        assert await store.commit([bumped(rec)]) == ["ok"]
        await store.aclose()
    run(go())


@pytest.mark.parametrize("fsync,kill", [("everysec", False), ("always", True)])
def test_redis_restart_keeps_every_acknowledged_write(fsync, kill):
    """A clean Redis restart loses nothing; neither does a kill -9 with appendfsync always (with everysec a
    kill -9 may lose the last ~2 s: Redis postpones AOF writes while a slow fsync runs; measured here)."""
    async def go(r):
        store = RedisStore(r.url)
        recs = [record(f"k{i}") for i in range(20)]
        for rec in recs:
            await store.create(rec)
        for _ in range(5):
            recs = [bumped(rec) for rec in recs]
            assert await store.commit(recs) == ["ok"] * 20
        r.restart(kill=kill)
        for rec in recs:
            same(await store.fetch(None, rec.id), rec)
        await store.aclose()
    with RedisProcess(fsync=fsync) as r:
        run(go(r))


def _increment(path: str, n: int) -> None:
    """One worker process: n steps of session 'shared' by CAS, re-reading on conflict."""
    async def go():
        store = SqliteStore(path, shared=True, busy_timeout=10)
        done = 0
        while done < n:
            rec = await store.fetch(None, "shared")
            if (await store.commit([bumped(rec)]))[0] == "ok":
                done += 1
        store.close()
    asyncio.run(go())


def test_sqlite_cas_across_worker_processes(tmp_path):
    path = str(tmp_path / "w.db")
    store = SqliteStore(path, shared=True)
    run(store.create(record("shared", steps=0)))
    procs = [multiprocessing.get_context("spawn").Process(target=_increment, args=(path, 60)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rec = run(store.fetch(None, "shared"))
    assert rec.version == 121 and rec.step_count == 120   # no step lost or applied on a stale copy
    store.close()


def test_shared_sqlite_purges_expired_rows(tmp_path, monkeypatch):
    from statestream.server.store import sqlite as store_module
    monkeypatch.setattr(store_module, "_PURGE_SECONDS", 0.0)
    s = SqliteStore(str(tmp_path / "p.db"), shared=True)
    live = record("live")

    async def go():
        gone = record("gone", timeout=0.05)
        gone.expires_at = time.time() - 1  # created, then its 0.05 s passed (no sleep)
        await s.create(gone)
        await s.create(live)
        assert s.count() == 2
        assert await s.commit([bumped(live)]) == ["ok"]
    run(go())
    assert s.count() == 1
    s.close()


def test_sqlite_single_process_load_and_old_files(tmp_path):
    path = tmp_path / "one.db"
    store = SqliteStore(str(path))
    run(store.create(record("x")))
    store.close()
    again = SqliteStore(str(path))
    assert [r.id for r in again.load()] == ["x"] and not again.shared
    again.close()
    assert SqliteStore(str(path), shared=True).load() == []   # workers read through instead


def test_memory_store_has_nothing_to_compare():
    async def go():
        m = MemoryStore()
        assert await m.create(record()) and await m.commit([record(), record()]) == ["ok", "ok"]
        assert await m.fetch(None, "s1") is None and not m.shared and not m.durable
        assert await m.check() is None and await m.commit([record()], timeout=0.1) == ["ok"]
    run(go())


def test_specs(tmp_path):
    assert check_spec("redis://127.0.0.1:6379/0") == ("redis", "redis://127.0.0.1:6379/0")
    assert check_spec("memory") == ("memory", "")
    for bad, why in [("redis://", "no host"), ("redis://h:port/0", "port is not a number"),
                     ("redis://h:1/zero", "database must be a number"), ("postgres://x", "expected memory")]:
        with pytest.raises(ValueError, match=why):
            check_spec(bad)
    assert isinstance(open_store("redis://127.0.0.1:1/0"), RedisStore)
    assert open_store(f"sqlite:{tmp_path / 'a.db'}", shared=True).shared
    assert not open_store(f"sqlite:{tmp_path / 'b.db'}").shared


def test_reloading_a_session_keeps_the_sequence_numbers_it_has_in_flight():
    """A lost compare-and-set reloads a session whose later steps are queued here: the next step follows them."""
    from statestream.server.engine.sessions import Cells, Session
    from statestream.server.engine.units import Unit

    s = Session("p", "demo", 0, None, 60.0, 0.0, Cells(1))
    for seq in (8, 9, 10):
        s.enqueue(Unit([s], np.zeros((1, 1, 3), np.float32), [seq], None), seq)
    s.start(s.head)
    s.load(record("p", version=9, seq=8))   # another replica applied 8 (a retry there): 9 and 10 still queued
    assert (s.last_seq, s.accepted_seq) == (8, 10)
    assert s.accept(11) is None
    s.drain()
    s.load(record("p", version=12, seq=11))
    assert s.accepted_seq == 11 and s.accept(12) is None


def test_redis_refusing_writes_is_unavailable_with_its_reason(redis_proc):
    async def go():
        store = RedisStore(redis_proc.url)
        rec = record("oom")
        await store.create(rec)
        redis_proc.client().config_set("maxmemory", 1)       # every write is refused: OOM
        with pytest.raises(Unavailable) as e:
            await store.commit([bumped(rec)])
        assert "refused the call" in e.value.message and "maxmemory" in e.value.message
        assert "nothing was applied" in e.value.message
        redis_proc.client().config_set("maxmemory", 0)
        same(await store.fetch(None, "oom"), rec)
        assert await store.commit([bumped(rec)]) == ["ok"]
        await store.aclose()
    run(go())


def test_redis_batch_partly_refused_says_some_sessions_were_written(redis_proc):
    async def go():
        store = RedisStore(redis_proc.url)
        good, bad = record("good"), record("bad")
        await store.create(good)
        redis_proc.client().set(b"statestream:s:\x00bad", b"not a hash")   # this record's script fails: WRONGTYPE
        with pytest.raises(Unavailable) as e:
            await store.commit([bumped(good), bumped(bad)])
        assert "refused part of a batch" in e.value.message and "some of its sessions were written" in e.value.message
        assert (await store.fetch(None, "good")).version == 2   # the good one was written, as the message says
        await store.aclose()
    run(go())


def test_sqlite_file_from_before_version_and_last_fp_is_migrated(tmp_path):
    """A file written before the `version` and `last_fp` columns: its sessions load (version 0, last_fp 0)
    and the next commit stores both."""
    import sqlite3

    path = tmp_path / "old.db"
    old = record("old", version=0, fp=0)
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE sessions (id TEXT NOT NULL, model TEXT NOT NULL, owner TEXT NOT NULL, state BLOB "
                    "NOT NULL, step_count INTEGER NOT NULL, last_seq INTEGER NOT NULL, timeout REAL NOT NULL, "
                    "expires_at REAL NOT NULL, last_output BLOB, last_rows INTEGER, last_state BLOB, "
                    "last_step_count INTEGER, PRIMARY KEY (owner, id))")
        con.execute("INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    ("old", "demo", "", old.state.tobytes(), 0, 0, 60.0, old.expires_at, old.last_output.tobytes(),
                     4, old.last_state.tobytes(), 0))
    store = SqliteStore(str(path))
    [loaded] = store.load()
    same(loaded, old)
    new = bumped(old)
    assert new.last_fp != 0 and run(store.commit([new])) == ["ok"]
    store.close()
    again = SqliteStore(str(path))
    [loaded] = again.load()
    same(loaded, new)
    again.close()


def test_redis_record_packed_before_last_fp_reads_as_zero():
    from statestream.server.store.redis import _MODEL, pack, unpack

    rec = record("r", fp=12345)
    data = pack(rec)
    same(unpack(data, rec.version, rec.expires_at), rec)
    older = unpack(data[:-8 - _MODEL.size], rec.version, rec.expires_at)   # no last_fp (nor model version) after the floats
    assert older.last_fp == 0 and older.state.tobytes() == rec.state.tobytes()


def test_commit_of_records_by_column_writes_each_record(store):
    """A model run commits its sessions as one Records (by column): every record reads back as it was, whatever
    its owner, recorded step and fingerprint; a stale one in the same batch is a conflict and changes nothing."""
    async def go():
        recs = [record("a", fp=2**64 - 1), record("a", owner="tenant-1", fp=2**63), record("b", last=False, fp=0),
                record("ü-☃ id", owner="t:2", steps=9, seq=4)]
        for r in recs:
            assert await store.create(r)
        new = [bumped(r) for r in recs]
        assert await store.commit(Records.of(new)) == ["ok"] * 4
        for r in new:
            same(await store.fetch(r.owner, r.id), r)
        assert await store.commit(Records.of([bumped(new[0]), bumped(recs[1])])) == ["ok", "conflict"]
        same(await store.fetch("tenant-1", "a"), new[1])
    run(go())


def test_redis_records_of_a_batch_packed_read_back_one_by_one():
    """The Redis packing of a batch (Records) gives each record the layout `unpack` reads (the head struct, id,
    model, owner, floats, fingerprint, model version and hash): every field back bit for bit, float64 input
    stored as float32."""
    from statestream.server.store.redis import _HEAD, _packed, unpack

    recs = [record("a", fp=2**64 - 1, steps=3, seq=2), record("bb", owner="tenant-ü", last=False, fp=0),
            record("c" * 128, owner="", steps=2**40, seq=2**33, timeout=0.25)]
    for r in recs:
        r.model_version, r.model_hash = 3, "f" * 64
    batch = Records.of(recs)
    batch.state = batch.state.astype(np.float64)   # a run's states in another dtype are stored as float32
    datas = _packed(batch, [r.id.encode() for r in recs], [None if r.owner is None else r.owner.encode() for r in recs])
    for data, r in zip(datas, recs):
        got = unpack(data, r.version, r.expires_at)
        same(got, r)
        assert (got.model_version, got.model_hash) == (3, "f" * 64)
    assert _HEAD.unpack_from(datas[2])[:4] == (2**40, 2**33, 2**40, 0.25)
