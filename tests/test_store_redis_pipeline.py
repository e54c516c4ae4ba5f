"""The Redis store's packed commits (store/resp.py, store/redis.py) against a real redis-server: one EVALSHA per
record or per shared hash tag, NOSCRIPT reloads, CAS outcomes inside one pipeline, timeouts and broken connections."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from itertools import chain

import hiredis
import pytest
import redis
import redisproc
from redis.crc import key_slot
from support import redis_process
from test_store_cas import bumped, record, same

from statestream.contract.errors import Unavailable
from statestream.server.store.redis import _CAS, SCRIPT_KEYS, RedisStore, _cas_commands, key, pack
from statestream.server.store.resp import hash_tag

redis_proc = redisproc.redis_proc  # the fixture, for this module's tests


def run(coro):
    return asyncio.run(coro)


def evalshas(records) -> list[list[bytes]]:
    """The commands a commit of `records` sends, parsed back (a RESP request is an array of bulk strings)."""
    commands, _ = _cas_commands(records, b"token")
    reader = hiredis.Reader()
    reader.feed(b"".join(chain.from_iterable(commands)))
    return [reader.gets() for _ in commands]


def standalone(redis_proc) -> RedisStore:
    """A store that asked its Redis at load: a standalone redis-server, so one script per SCRIPT_KEYS records."""
    store = RedisStore(redis_proc.url)
    store.load()
    assert store.one_node
    return store


def test_hash_tags_follow_redis_cluster():
    assert hash_tag(b"s:\x00{gw-7}dev-3") == b"gw-7"
    assert hash_tag(b"{a}{b}") == b"a" and hash_tag(b"x}{b}") == b"b"
    for untagged in (b"plain", b"{}x", b"a{b", b"a}b"):
        assert hash_tag(untagged) is None


def test_every_script_touches_keys_of_one_cluster_slot():
    """Sessions sharing a hash tag are one EVALSHA, every other one its own: no script spans two slots."""
    ids = ["{g1}a", "plain", "{g1}b", "{g2}c", "{}d", "{g1}e", "{g2}"]
    recs = [record(sid) for sid in ids] + [record("x", owner="{tenant}")]
    cmds = evalshas(recs)
    assert all(c[0] == b"EVALSHA" and c[1] == _CAS.sha for c in cmds)
    groups = [c[3:3 + int(c[2])] for c in cmds]
    assert sorted(len(g) for g in groups) == [1, 1, 1, 2, 3]   # plain, {}d, owner {tenant}; {g2} x2; {g1} x3
    for g in groups:
        assert len({key_slot(k) for k in g}) == 1
    assert sorted(chain.from_iterable(groups)) == sorted(key(r.owner, r.id) for r in recs)
    g1 = next(c for c in cmds if int(c[2]) == 3)
    assert g1[6] == b"token" and g1[7:9] == [b"1", b"0"]   # the token, then per key: new and previous version,
    assert 59_000 < int(g1[9]) <= 60_000 and g1[10] == pack(recs[0])   # ttl ms, the packed record


def test_scripts_hold_at_most_script_keys_and_a_standalone_redis_mixes_tags():
    """A shared tag of more than SCRIPT_KEYS sessions is several scripts (Redis runs each alone); on a standalone
    Redis (`one_node`) any keys share a script, SCRIPT_KEYS at most, every record covered once."""
    tagged = [record(f"{{big}}{i}") for i in range(SCRIPT_KEYS + 44)]
    assert sorted(int(c[2]) for c in evalshas(tagged)) == [44, SCRIPT_KEYS]
    mixed = [record(sid) for sid in (f"{{g{i % 3}}}{i}" if i % 2 else f"plain{i}" for i in range(SCRIPT_KEYS + 44))]
    cluster = evalshas(mixed)
    assert len(cluster) == (SCRIPT_KEYS + 44) // 2 + 3   # every untagged key alone, one script per tag
    commands, covers = _cas_commands(mixed, b"token", one_node=True)
    assert [len(c) for c in covers] == [SCRIPT_KEYS, 44]
    assert sorted(chain.from_iterable(covers)) == list(range(len(mixed)))
    reader = hiredis.Reader()
    reader.feed(b"".join(chain.from_iterable(commands)))
    keys = [k for c in (reader.gets() for _ in commands) for k in c[3:3 + int(c[2])]]
    assert keys == [key(r.owner, r.id) for r in mixed]


def test_a_store_asks_whether_its_redis_is_standalone(redis_proc, caplog):
    store = RedisStore(redis_proc.url)
    assert not store.one_node   # until it knows: no script spans two slots
    store.load()
    assert store.one_node
    down = RedisStore(f"redis://127.0.0.1:{redis_process.free_port()}/0", connect_timeout=0.2, timeout=0.5)
    down.load()   # Redis not there at start: a warning, and the Cluster-safe scripts
    assert not down.one_node and "does not answer at start" in caplog.text


@pytest.mark.parametrize("one_node", [False, True])
@pytest.mark.parametrize("tagged", [False, True])
def test_cas_outcomes_inside_one_pipeline(redis_proc, tagged, one_node):
    """ok, conflict and missing in one commit, with and without a shared hash tag: each record gets its own."""
    async def go():
        store = standalone(redis_proc) if one_node else RedisStore(redis_proc.url)
        name = (lambda s: f"{{frame}}{s}") if tagged else (lambda s: s)
        a, b, c = record(name("a")), record(name("b")), record("other")
        for r in (a, b, c):
            assert await store.create(r)
        stale = bumped(a)
        a2, b2 = bumped(a), bumped(b)
        assert await store.commit([a2, b2]) == ["ok", "ok"]
        ghost = record(name("ghost"), version=2)
        stale.state = stale.state * 3
        got = await store.commit([stale, bumped(b2), ghost, bumped(c)])
        assert got == ["conflict", "ok", "missing", "ok"]
        same(await store.fetch(None, name("a")), a2)      # the stale write changed nothing
        same(await store.fetch(None, name("b")), bumped(b2))
        assert await store.fetch(None, name("ghost")) is None
        await store.aclose()
    run(go())


@pytest.mark.parametrize("one_node", [False, True])
@pytest.mark.parametrize("tagged", [False, True])
def test_script_flush_reloads_the_script_in_one_more_round_trip(redis_proc, tagged, one_node):
    async def go():
        store = standalone(redis_proc) if one_node else RedisStore(redis_proc.url)
        recs = [record(f"{{g}}f{i}" if tagged else f"f{i}") for i in range(5)]
        for r in recs:
            assert await store.create(r)
        r = redis_proc.client()
        r.script_flush()
        assert r.script_exists(_CAS.sha.decode()) == [False]
        recs = [bumped(x) for x in recs]
        assert await store.commit(recs) == ["ok"] * 5
        assert r.script_exists(_CAS.sha.decode()) == [True]   # loaded again by the commit
        for x in recs:
            same(await store.fetch(None, x.id), x)
        await store.aclose()
    run(go())


@pytest.mark.parametrize("one_node", [False, True])
@pytest.mark.parametrize("tagged", [False, True])
def test_a_key_of_another_type_refuses_only_its_record(redis_proc, tagged, one_node):
    """One key's error inside a shared-tag script does not stop the others (as with one script per key)."""
    async def go():
        store = standalone(redis_proc) if one_node else RedisStore(redis_proc.url)
        good, bad = record("{t}good" if tagged else "good"), record("{t}bad" if tagged else "bad")
        assert await store.create(good)
        redis_proc.client().set(key(None, bad.id), b"not a hash")
        with pytest.raises(Unavailable, match="refused part of a batch .*WRONGTYPE"):
            await store.commit([bumped(good), bumped(bad)])
        assert (await store.fetch(None, good.id)).version == 2
        await store.aclose()
    run(go())


def test_a_timed_out_call_never_hands_its_late_reply_to_the_next(redis_proc):
    """A commit that times out (Redis stopped) closes its connection: once Redis answers again, the next calls get
    their own replies, not the late one of the call that gave up."""
    async def go():
        store = RedisStore(redis_proc.url, timeout=30)
        a, b = record("a"), record("b")
        assert await store.create(a) and await store.create(b)
        os.kill(redis_proc.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(Unavailable, match="no answer within 0.3 s.*may have reached Redis"):
                await store.commit([bumped(a)], timeout=0.3)    # its reply would be [0]: "ok"
            assert time.monotonic() - started < 2
        finally:
            os.kill(redis_proc.proc.pid, signal.SIGCONT)
        # Redis may or may not apply the given-up write (it was sent); what it holds reads back as itself, and a
        # stale reply read as the answer to these four (HMGET, PTTL, HMGET, PTTL) would fail to unpack
        now_a, now_b = await store.fetch_many([(None, "a"), (None, "b")])
        assert now_a.version in (1, 2) and now_b.version == 1 and now_b.id == "b"
        assert await store.commit([bumped(now_a), bumped(b)]) == ["ok", "ok"]
        await store.aclose()
    run(go())


def test_a_broken_connection_is_retried_on_a_new_one(redis_proc):
    """Connections closed by Redis (CLIENT KILL) between calls: the next call still succeeds, once."""
    async def go():
        store = RedisStore(redis_proc.url)
        rec = record("k")
        assert await store.create(rec)
        redis_proc.client().client_kill_filter(_type="normal", skipme=True)
        rec2 = bumped(rec)
        assert await store.commit([rec2]) == ["ok"]
        same(await store.fetch(None, "k"), rec2)
        await store.aclose()
    run(go())


def test_password_and_database_from_the_url(redis_proc):
    async def go():
        redis_proc.client().config_set("requirepass", "s3cret")
        store = RedisStore(f"redis://:s3cret@127.0.0.1:{redis_proc.port}/3")
        rec = record("db3")
        assert await store.create(rec) and await store.commit([bumped(rec)]) == ["ok"]
        assert await store.check() is None
        with redis.Redis(port=redis_proc.port, password="s3cret", db=3) as c:
            assert c.hget(key(None, "db3"), "v") == b"2"
        wrong = RedisStore(f"redis://:nope@127.0.0.1:{redis_proc.port}/0")
        with pytest.raises(Unavailable, match="nothing was applied"):
            await wrong.fetch(None, "db3")
        await store.aclose()
    run(go())
