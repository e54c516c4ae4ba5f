"""RedisStore: session state shared by every replica and worker, compare-and-set per session, one round trip a batch."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import struct
import time
from itertools import chain
from urllib.parse import urlsplit

import numpy as np
import redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from statestream.contract.errors import Unavailable
from statestream.server.store.base import CONFLICT, DEFAULT_TIMEOUT, MISSING, OK, Records, SessionRecord
from statestream.server.store.resp import Pool, bulk, command, hash_tag

log = logging.getLogger("statestream.server.store")

NAMESPACE = b"statestream:s:"
PING_SECONDS = 1.0  # the health probe's bound
SCRIPT_KEYS = 256  # keys of one CAS script at most: Redis runs a script alone, 256 sessions take it ~2-3 ms
SOCKET_SECONDS = 5.0  # the bound of a call when the store was made with timeout=None

# One hash per session: v = version (decimal), w = token of the write that set v, d = the packed record.
# TTL = what is left of the session's idle timeout, refreshed by every write (an idle session expires in Redis).
# CAS of every key in KEYS: ARGV = write token, then per key new version, previous version, ttl ms, packed record.
# Answers one code per key: 0 ok, 1 conflict, 2 missing, or that key's error (the other keys still get theirs).
# A retried write (the reply was lost, the call was resent) finds its own token at the new version: "ok" again,
# never "conflict", so a retry can not make the caller re-run a step that was applied.
CAS_SCRIPT = """
local function cas(k, token, new, prev, ttl, data)
  local v = redis.call('HGET', k, 'v')
  if not v then return 2 end
  if v == prev then
    redis.call('HSET', k, 'v', new, 'w', token, 'd', data)
    redis.call('PEXPIRE', k, ttl)
    return 0
  end
  if v == new and redis.call('HGET', k, 'w') == token then return 0 end
  return 1
end
local out, token = {}, ARGV[1]
for i, k in ipairs(KEYS) do
  local a = 4 * i - 2
  local ok, code = pcall(cas, k, token, ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])
  if ok then out[i] = code else out[i] = redis.error_reply(type(code) == 'table' and code.err or tostring(code)) end
end
return out
"""
CREATE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'w') == ARGV[2] then return 1 end
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'w', ARGV[2], 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""


class _Script:
    """A Lua script run by SHA (EVALSHA); `load` is its SCRIPT LOAD command, sent when Redis answers NOSCRIPT."""

    def __init__(self, text: str):
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest().encode()
        self.load = command("SCRIPT", "LOAD", text)


_CAS, _CREATE = _Script(CAS_SCRIPT), _Script(CREATE_SCRIPT)
_EVALSHA_CAS = b"$7\r\nEVALSHA\r\n$40\r\n" + _CAS.sha + b"\r\n"
_CAS_ONE = b"*9\r\n" + _EVALSHA_CAS + b"$1\r\n1\r\n"   # EVALSHA sha 1 KEY token new prev ttl record
_HMGET, _VD = b"*4\r\n$5\r\nHMGET\r\n", b"$1\r\nv\r\n$1\r\nd\r\n"   # HMGET KEY v d
_PTTL, _UNLINK = b"*2\r\n$4\r\nPTTL\r\n", b"*2\r\n$6\r\nUNLINK\r\n"
_PING = command("PING")
_CODES = (OK, CONFLICT, MISSING)


class _PartlyWritten(redis.RedisError):
    """Some records of a batch were written, others refused (one-key scripts are atomic one by one)."""

# Packed record: step_count, last_seq, last_step_count, timeout, byte lengths of id/model/owner (owner -1: None),
# floats in state, rows and floats of the last output (-1: none), floats of the last state (-1: none); after the
# floats, last_fp (unsigned 64-bit; records packed before it have none: 0); then the model version and the byte
# length of its hash, the hash (records packed before versions have neither: version 1, hash "").
_HEAD = struct.Struct("<qqqdiiiiiii")
_FP = struct.Struct("<Q")
_MODEL = struct.Struct("<qi")
_F32 = np.dtype(np.float32)


def pack(rec: SessionRecord) -> bytes:
    """A SessionRecord (but version and expiry, kept in the hash and the TTL) as bytes; floats bit-exact."""
    sid = rec.id.encode("utf-8", "surrogatepass")
    return _packed(Records.of([rec]), [sid], [None if rec.owner is None else rec.owner.encode("utf-8", "surrogatepass")])[0]


def _f32(a: np.ndarray | None) -> np.ndarray | None:
    return a if a is None or a.dtype == _F32 else a.astype(_F32)


def _packed(recs: Records, sids: list[bytes], owners: list[bytes | None]) -> list[bytes]:
    """`pack` of every record, given their ids and owners encoded (the commit has them for the keys): the states
    as one block of bytes, the numbers as lists, then per record one struct and one join."""
    model, mhash = recs.model.encode(), recs.model_hash.encode()
    state = np.ascontiguousarray(_f32(recs.state))
    w, nm = state.shape[1], len(model)
    states, b = memoryview(state.tobytes()), 4 * w
    tail = _MODEL.pack(recs.model_version, len(mhash)) + mhash
    head, fp, out = _HEAD.pack, _FP.pack, []
    for i, (sid, owner, steps, seq, last_steps, timeout, o, a, f) in enumerate(zip(
            sids, owners, recs.step_count.tolist(), recs.last_seq, recs.last_step_count, recs.timeout.tolist(),
            recs.last_output, recs.last_state, recs.last_fp)):
        o, a = _f32(o), _f32(a)
        out.append(b"".join((
            head(steps, seq, last_steps, timeout, len(sid), nm, -1 if owner is None else len(owner), w,
                 -1 if o is None else o.shape[0], -1 if o is None else o.size, -1 if a is None else a.size),
            sid, model, owner or b"", states[i * b:i * b + b], b"" if o is None else o.tobytes(),
            b"" if a is None else a.tobytes(), fp(f), tail)))
    return out


def unpack(data: bytes, version: int, expires_at: float) -> SessionRecord:
    """The SessionRecord packed by `pack`."""
    steps, seq, last_steps, timeout, n_id, n_model, n_owner, n_state, rows, n_out, n_last = _HEAD.unpack_from(data)
    pos = _HEAD.size

    def take(n: int) -> bytes:
        nonlocal pos
        pos += n
        return data[pos - n:pos]

    def floats(n: int) -> np.ndarray | None:
        return None if n < 0 else np.frombuffer(take(4 * n), dtype=np.float32).copy()

    sid, model = take(n_id).decode("utf-8", "surrogatepass"), take(n_model).decode()
    owner = None if n_owner < 0 else take(n_owner).decode("utf-8", "surrogatepass")
    state = floats(n_state)
    out = floats(n_out)
    if out is not None:
        out = out.reshape(rows, -1) if rows else out.reshape(0, 0)
    last = floats(n_last)
    fp = _FP.unpack_from(data, pos)[0] if len(data) >= pos + _FP.size else 0
    model_version, model_hash = 1, ""
    pos += _FP.size
    if len(data) >= pos + _MODEL.size:
        model_version, n_hash = _MODEL.unpack_from(data, pos)
        pos += _MODEL.size
        model_hash = take(n_hash).decode()
    return SessionRecord(sid, model, owner, state, steps, seq, timeout, expires_at, out, last, last_steps, version,
                         fp, model_version, model_hash)


def key(owner: str | None, sid: str) -> bytes:
    """The Redis key of a session: namespace, owner ('' without auth), NUL, id (NUL cannot occur in either)."""
    return _key(b"" if owner is None else owner.encode("utf-8", "surrogatepass"), sid.encode("utf-8", "surrogatepass"))


def _key(owner: bytes, sid: bytes) -> bytes:
    return b"%s%s\x00%s" % (NAMESPACE, owner, sid)


def check_url(url: str) -> str:
    """`url` if redis-py can use it as a state store (redis://HOST[:PORT][/DB]), else ValueError saying why."""
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ValueError(f"--state-store {url}: no host; expected redis://HOST:PORT/DB")
        try:
            parts.port
        except ValueError:
            raise ValueError(f"--state-store {url}: the port is not a number") from None
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ValueError(f"--state-store {url}: the database must be a number, got {db!r}")
    return url


def _shown(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


class RedisStore:
    """Every session in Redis: any replica or worker can serve any session; local tables are caches.

    A commit is one round trip: one write of pre-packed EVALSHA commands of the CAS script, one parse of the
    replies (store/resp.py). On a standalone Redis (`one_node`) the records are compared-and-set by one EVALSHA
    per SCRIPT_KEYS of them; otherwise sessions whose keys share a Redis Cluster hash tag (ids like
    "{gateway-7}:dev-3") by one EVALSHA per SCRIPT_KEYS of them, all others by one EVALSHA each: no script touches
    keys of two slots, so this stays valid on Redis Cluster. The scripts run by SHA; a NOSCRIPT answer (SCRIPT
    FLUSH, a restarted or failed-over Redis) loads the script and re-runs only the commands that got it, in one
    more round trip.
    Redis unreachable: `errors.Unavailable`, and this process applies nothing.

    Every call is bounded by its `timeout` (default: the store's, --store-timeout): a Redis that does not
    answer in time (stopped, partitioned) is `errors.Unavailable` then, not when the client's deadline passed.
    A broken connection is retried (up to 3 times, backing off): every call is idempotent, a write by its token.
    """

    durable = True
    shared = True

    def __init__(self, url: str, *, connect_timeout: float = 2.0, timeout: float | None = DEFAULT_TIMEOUT):
        self.url = check_url(url)
        self.description = (f"{_shown(url)} (shared by replicas and workers; compare-and-set per session, "
                            "one round trip per batch, expiry as a Redis TTL)")
        self.timeout = timeout  # default bound of one call, seconds (None: SOCKET_SECONDS)
        self._connect_timeout = min(connect_timeout, timeout or connect_timeout)
        self._pool = Pool(url, self._connect_timeout)
        self._retry = Retry(ExponentialBackoff(cap=0.25, base=0.05), 3)
        self._writer = os.urandom(6).hex()
        self._writes = 0
        # A standalone Redis (`load` asks: INFO cluster says cluster_enabled 0) takes one script over keys of any
        # hash tag; otherwise (a Cluster, a proxy that does not answer INFO, a Redis down at start) no script spans
        # two slots.
        self.one_node = False

    def _token(self) -> bytes:
        self._writes += 1
        return f"{self._writer}:{self._writes}".encode()

    def _unavailable(self, e: Exception, write: bool = False) -> Unavailable:
        """The error for a failed call: a read or a refused connection applied nothing; a write whose connection
        broke after it was sent may have reached Redis (then a retry with its sequence number is a replay)."""
        if isinstance(e, _PartlyWritten):
            return Unavailable(f"state store {_shown(self.url)} refused part of a batch ({e}); this server applied "
                               "nothing, but some of its sessions were written: retry with the same sequence "
                               "numbers (an applied step is then answered from its record, not run twice)")
        if isinstance(e, redis.ResponseError):  # Redis answered: out of memory, read-only replica, ...
            return Unavailable(f"state store {_shown(self.url)} refused the call ({e}); nothing was applied")
        if not write or (isinstance(e, redis.ConnectionError) and "connecting to" in str(e)):
            outcome = "nothing was applied, retry once it is back"
        else:
            outcome = ("this server applied nothing, but the write may have reached Redis: retry with the same "
                       "sequence number (an applied step is then answered from its record, not run twice)")
        return Unavailable(f"state store {_shown(self.url)} is unreachable ({e}); {outcome}")

    async def _bounded(self, coro, timeout: float | None, write: bool = False):
        """`coro` (one store call), at most `timeout` seconds (None: the store's); Redis errors as Unavailable."""
        timeout = self.timeout if timeout is None else timeout
        timeout = SOCKET_SECONDS if timeout is None else timeout
        try:
            return await asyncio.wait_for(coro, timeout)
        except TimeoutError:
            e = redis.TimeoutError(f"no answer within {timeout:g} s")
            raise self._unavailable(e, write) from None
        except redis.RedisError as e:
            raise self._unavailable(e, write) from e

    async def _roundtrip(self, data: bytes, n: int) -> list:
        """n packed commands, one write; their n replies. A broken connection: again on a new one (backing off)."""
        async def broken(_error):
            self._pool.clear()
        return await self._retry.call_with_retry(lambda: self._pool.roundtrip(data, n), broken)

    async def _checked(self, data: bytes, n: int) -> list:
        """_roundtrip, raising the first error reply."""
        return _raise_errors(await self._roundtrip(data, n))

    async def _evalsha(self, script: _Script, commands: list[tuple], checked: bool = False) -> list:
        """EVALSHA commands of `script` (each a tuple of RESP pieces), one round trip; those answered NOSCRIPT again
        after loading it. `checked`: raise the first error reply (else error replies are returned)."""
        replies = await self._roundtrip(b"".join(chain.from_iterable(commands)), len(commands))
        again = [i for i, r in enumerate(replies) if isinstance(r, redis.ResponseError) and str(r).startswith("NOSCRIPT")]
        if again:
            log.info("state store: a script is not in Redis' script cache (a Redis restart or SCRIPT FLUSH); "
                     "loading it again")
            loaded, *retried = await self._roundtrip(
                b"".join(chain([script.load], *(commands[i] for i in again))), 1 + len(again))
            if isinstance(loaded, redis.ResponseError):
                raise loaded
            for i, r in zip(again, retried):
                replies[i] = r
        return _raise_errors(replies) if checked else replies

    async def check(self) -> str | None:
        """None while Redis answers a PING within the store's timeout (at most PING_SECONDS: health must turn
        within about a second, whatever --store-timeout is); else why not."""
        try:
            await self._bounded(self._checked(_PING, 1), min(self.timeout or PING_SECONDS, PING_SECONDS))
        except Unavailable as e:
            return e.message
        return None

    def load(self) -> list[SessionRecord]:
        """Nothing: sessions are read through on first use. Loads the scripts now (saves the first batch a
        NOSCRIPT round trip) and asks whether Redis is standalone (`one_node`); logs a warning when Redis does not
        answer."""
        try:
            with redis.Redis.from_url(self.url, socket_connect_timeout=self._connect_timeout,
                                      socket_timeout=self.timeout or SOCKET_SECONDS) as r:
                for script in (_CAS, _CREATE):
                    r.script_load(script.text)
                self.one_node = r.info("cluster").get("cluster_enabled") == 0
        except redis.RedisError as e:
            log.warning("state store %s does not answer at start (%s): steps fail UNAVAILABLE until it does",
                        _shown(self.url), e)
        return []

    async def fetch(self, owner: str | None, sid: str, *, timeout: float | None = None) -> SessionRecord | None:
        """The stored session, or None (never stored, closed, or expired): one round trip."""
        return (await self.fetch_many([(owner, sid)], timeout=timeout))[0]

    async def fetch_many(self, keys: list[tuple[str | None, str]], *,
                         timeout: float | None = None) -> list[SessionRecord | None]:
        """fetch for many sessions in one round trip (a pipeline of one-key reads)."""
        if not keys:
            return []
        parts = []
        for owner, sid in keys:
            k = bulk(key(owner, sid))
            parts += (_HMGET, k, _VD, _PTTL, k)
        replies = await self._bounded(self._checked(b"".join(parts), 2 * len(keys)), timeout)
        now, out = time.time(), []
        for (version, data), pttl in zip(replies[::2], replies[1::2]):
            if version is None or data is None:
                out.append(None)
            else:
                out.append(unpack(data, int(version), now + (pttl / 1000 if pttl > 0 else 0.0)))
        return out

    async def create(self, rec: SessionRecord, *, timeout: float | None = None) -> bool:
        """Store `rec` if its (owner, id) has no session; False if one exists."""
        ttl = max(1, int((rec.expires_at - time.time()) * 1000))
        cmd = command("EVALSHA", _CREATE.sha, 1, key(rec.owner, rec.id), rec.version, self._token(), pack(rec), ttl)
        return bool((await self._bounded(self._evalsha(_CREATE, [(cmd,)], checked=True), timeout, write=True))[0])

    async def commit(self, records: Records | list[SessionRecord], *, timeout: float | None = None) -> list[str]:
        """Compare-and-set every record in one round trip: "ok" | "conflict" | "missing" per record."""
        if not records:
            return []
        return await self._bounded(self._commit(records, self._token()), timeout, write=True)

    async def _commit(self, records: list[SessionRecord], token: bytes) -> list[str]:
        commands, covers = _cas_commands(records, token, self.one_node)
        codes: list = [None] * len(records)   # per record: 0, 1, 2 (_CODES) or its error
        for reply, cover in zip(await self._evalsha(_CAS, commands), covers):
            if isinstance(reply, redis.ResponseError):   # the whole command refused (out of memory, NOSCRIPT again)
                reply = [reply] * (1 if cover.__class__ is int else len(cover))
            if cover.__class__ is int:
                codes[cover] = reply[0]
            else:
                for i, code in zip(cover, reply):
                    codes[i] = code
        try:
            return [_CODES[c] for c in codes]
        except TypeError:   # an error: e.g. a key of another type; written records stay written, so say so
            errors = [c for c in codes if isinstance(c, redis.ResponseError)]
            raise _PartlyWritten(str(errors[0])) if 0 in codes else errors[0] from None

    async def delete(self, keys: list[tuple[str | None, str]], *, timeout: float | None = None) -> None:
        """Remove sessions (closed): one round trip."""
        if keys:
            data = b"".join(_UNLINK + bulk(key(owner, sid)) for owner, sid in keys)
            await self._bounded(self._checked(data, len(keys)), timeout)

    async def aclose(self) -> None:
        self._pool.clear()

    def close(self) -> None:
        """Close the idle connections."""
        self._pool.clear()


def _raise_errors(replies: list) -> list:
    """`replies`, or the first error reply among them raised."""
    for r in replies:
        if isinstance(r, redis.ResponseError):
            raise r
    return replies


def _cas_commands(records, token: bytes, one_node: bool = False) -> tuple[list[tuple], list]:
    """The EVALSHA commands of one commit of `records` (Records, or a list of SessionRecords), each a tuple of RESP
    pieces, and the records each covers (an index, or a tuple of indexes for a group): one command per hash tag
    shared by several keys, one per other record; on a standalone Redis (`one_node`), one command per SCRIPT_KEYS
    records whatever their keys. Once per session: the record packed, its key and arguments formatted."""
    recs = Records.of(records)
    n = len(recs)
    tok = bulk(token)
    sids = [s.encode("utf-8", "surrogatepass") for s in recs.ids]
    owners = [None if o is None else o.encode("utf-8", "surrogatepass") for o in recs.owners]
    now = time.time()
    keys, kbulks, argvs = [], [], []   # per record: its key; as RESP, the key and its arguments (below)
    for sid, owner, version, expires, data in zip(sids, owners, recs.version.tolist(), recs.expires_at.tolist(),
                                                  _packed(recs, sids, owners)):
        k = _key(owner or b"", sid)
        ttl = int((expires - now) * 1000)
        new, prev, ttl = b"%d" % version, b"%d" % (version - 1), b"%d" % ttl if ttl > 0 else b"1"
        keys.append(k)
        kbulks.append(b"$%d\r\n%s\r\n" % (len(k), k))
        argvs.append(b"$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (   # new prev ttl record
            len(new), new, len(prev), prev, len(ttl), ttl, len(data), data))
    if one_node:
        groups, singles = [range(a, min(a + SCRIPT_KEYS, n)) for a in range(0, n, SCRIPT_KEYS)], []
    else:
        groups, singles = _by_tag(keys)
    commands = [(_CAS_ONE, kbulks[i], tok, argvs[i]) for i in singles]   # EVALSHA sha 1 KEY token new prev ttl rec
    covers: list = list(singles)
    for g in groups:   # EVALSHA sha m KEY1..KEYm token (new prev ttl rec)1..m
        head = b"*%d\r\n%s%s" % (4 + 5 * len(g), _EVALSHA_CAS, bulk(b"%d" % len(g)))
        commands.append((head, *[kbulks[i] for i in g], tok, *[argvs[i] for i in g]))
        covers.append(tuple(g))
    return commands, covers


def _by_tag(keys: list[bytes]) -> tuple[list[list[int]], list[int]]:
    """(the indexes of keys sharing a hash tag, in groups of at most SCRIPT_KEYS; the indexes of the others)."""
    singles: list[int] = []
    tagged: dict[bytes, list[int]] = {}
    full: list[list[int]] = []
    for i, k in enumerate(keys):
        tag = hash_tag(k) if b"{" in k else None
        if tag is None:
            singles.append(i)
            continue
        group = tagged.get(tag)
        if group is None or len(group) == SCRIPT_KEYS:
            if group is not None:
                full.append(group)
            group = tagged[tag] = []
        group.append(i)
    return full + list(tagged.values()), singles
