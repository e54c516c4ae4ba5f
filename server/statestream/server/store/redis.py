"""RedisStore: session state shared by every replica and worker, compare-and-set per session, one round trip a batch."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from urllib.parse import urlsplit

import numpy as np
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import NoScriptError

from statestream.contract.errors import Unavailable
from statestream.server.store.base import CONFLICT, DEFAULT_TIMEOUT, MISSING, OK, SessionRecord

log = logging.getLogger("statestream.server.store")

NAMESPACE = b"statestream:s:"
PING_SECONDS = 1.0  # the health probe's bound

# One hash per session: v = version (decimal), w = token of the write that set v, d = the packed record.
# TTL = what is left of the session's idle timeout, refreshed by every write (an idle session expires in Redis).
# CAS: ARGV = new version, write token, packed record, ttl ms, previous version. 0 ok, 1 conflict, 2 missing.
# A retried write (the reply was lost, redis-py resent it) finds its own token at the new version: "ok" again,
# never "conflict", so a retry can not make the caller re-run a step that was applied.
_CAS_FUNCTION = """
local function cas(k, new, token, data, ttl, prev)
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
"""
CAS_SCRIPT = _CAS_FUNCTION + "return cas(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])\n"
CREATE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'w') == ARGV[2] then return 1 end
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'w', ARGV[2], 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""
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


def pack(rec: SessionRecord) -> bytes:
    """A SessionRecord (but version and expiry, kept in the hash and the TTL) as bytes; floats bit-exact."""
    sid, model = rec.id.encode("utf-8", "surrogatepass"), rec.model.encode()
    owner = b"" if rec.owner is None else rec.owner.encode("utf-8", "surrogatepass")
    state = np.ascontiguousarray(rec.state, dtype=np.float32)
    out = None if rec.last_output is None else np.ascontiguousarray(rec.last_output, dtype=np.float32)
    last = None if rec.last_state is None else np.ascontiguousarray(rec.last_state, dtype=np.float32)
    head = _HEAD.pack(rec.step_count, rec.last_seq, rec.last_step_count, rec.timeout, len(sid), len(model),
                      -1 if rec.owner is None else len(owner), state.size,
                      -1 if out is None else out.shape[0], -1 if out is None else out.size,
                      -1 if last is None else last.size)
    return b"".join((head, sid, model, owner, state.tobytes(), b"" if out is None else out.tobytes(),
                     b"" if last is None else last.tobytes(), _FP.pack(rec.last_fp),
                     _MODEL.pack(rec.model_version, len(rec.model_hash)), rec.model_hash.encode()))


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
    return NAMESPACE + (owner or "").encode("utf-8", "surrogatepass") + b"\x00" + sid.encode("utf-8", "surrogatepass")


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

    One commit per batch is one pipeline of one-key CAS scripts (one round trip; each script touches one key,
    so it stays valid on Redis Cluster). The scripts are registered with `register_script` and run by SHA; a
    NOSCRIPT answer (SCRIPT FLUSH, a restarted or failed-over Redis) loads them again and re-runs only the
    records that got it. Redis unreachable: `errors.Unavailable`, and this process applies nothing.

    Every call is bounded by its `timeout` (default: the store's, --store-timeout): a Redis that does not
    answer in time (stopped, partitioned) is `errors.Unavailable` then, not when the client's deadline passed.
    """

    durable = True
    shared = True

    def __init__(self, url: str, *, connect_timeout: float = 2.0, timeout: float | None = DEFAULT_TIMEOUT):
        self.url = check_url(url)
        self.description = (f"{_shown(url)} (shared by replicas and workers; compare-and-set per session, "
                            "one round trip per batch, expiry as a Redis TTL)")
        self._retry = dict(retry=Retry(ExponentialBackoff(cap=0.25, base=0.05), 3),
                           retry_on_error=[redis.ConnectionError, redis.TimeoutError])
        self.timeout = timeout  # default bound of one call, seconds (None: only the socket timeouts bound it)
        self._timeouts = dict(socket_connect_timeout=min(connect_timeout, timeout or connect_timeout),
                              socket_timeout=timeout or 5.0)
        self.client = aioredis.from_url(url, **self._timeouts, **self._retry)
        self._cas = self.client.register_script(CAS_SCRIPT)
        self._create = self.client.register_script(CREATE_SCRIPT)
        self._writer = os.urandom(6).hex()
        self._writes = 0
        self._closing: asyncio.Task | None = None

    def _token(self) -> str:
        self._writes += 1
        return f"{self._writer}:{self._writes}"

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
        try:
            return await asyncio.wait_for(coro, timeout)
        except TimeoutError:
            e = redis.TimeoutError(f"no answer within {timeout:g} s")
            raise self._unavailable(e, write) from None
        except redis.RedisError as e:
            raise self._unavailable(e, write) from e

    async def check(self) -> str | None:
        """None while Redis answers a PING within the store's timeout (at most PING_SECONDS: health must turn
        within about a second, whatever --store-timeout is); else why not."""
        try:
            await self._bounded(self.client.ping(), min(self.timeout or PING_SECONDS, PING_SECONDS))
        except Unavailable as e:
            return e.message
        return None

    def load(self) -> list[SessionRecord]:
        """Nothing: sessions are read through on first use. Loads the scripts now (saves the first batch a
        NOSCRIPT round trip); logs a warning when Redis does not answer."""
        try:
            with redis.Redis.from_url(self.url, **self._timeouts) as r:
                for script in (CAS_SCRIPT, CREATE_SCRIPT):
                    r.script_load(script)
        except redis.RedisError as e:
            log.warning("state store %s does not answer at start (%s): steps fail UNAVAILABLE until it does",
                        _shown(self.url), e)
        return []

    @staticmethod
    def _args(rec: SessionRecord, token: str) -> list:
        ttl = max(1, int((rec.expires_at - time.time()) * 1000))
        return [rec.version, token, pack(rec), ttl, rec.version - 1]

    async def fetch(self, owner: str | None, sid: str, *, timeout: float | None = None) -> SessionRecord | None:
        """The stored session, or None (never stored, closed, or expired): one round trip."""
        return (await self.fetch_many([(owner, sid)], timeout=timeout))[0]

    async def fetch_many(self, keys: list[tuple[str | None, str]], *,
                         timeout: float | None = None) -> list[SessionRecord | None]:
        """fetch for many sessions in one round trip (a pipeline of one-key reads)."""
        if not keys:
            return []

        async def read():
            async with self.client.pipeline(transaction=False) as p:
                for owner, sid in keys:
                    k = key(owner, sid)
                    p.hmget(k, "v", "d")
                    p.pttl(k)
                return await p.execute()

        replies = await self._bounded(read(), timeout)
        now, out = time.time(), []
        for (version, data), pttl in zip(replies[::2], replies[1::2]):
            if version is None or data is None:
                out.append(None)
            else:
                out.append(unpack(data, int(version), now + (pttl / 1000 if pttl > 0 else 0.0)))
        return out

    async def create(self, rec: SessionRecord, *, timeout: float | None = None) -> bool:
        """Store `rec` if its (owner, id) has no session; False if one exists."""
        created = self._create(keys=[key(rec.owner, rec.id)], args=self._args(rec, self._token()))
        return bool(await self._bounded(created, timeout, write=True))

    async def commit(self, records: list[SessionRecord], *, timeout: float | None = None) -> list[str]:
        """Compare-and-set every record in one round trip: "ok" | "conflict" | "missing" per record."""
        if not records:
            return []
        token = self._token()
        return await self._bounded(self._commit_pipeline(records, token), timeout, write=True)

    async def _commit_pipeline(self, records: list[SessionRecord], token: str) -> list[str]:
        args = [(key(r.owner, r.id), self._args(r, token)) for r in records]
        codes: list = [None] * len(records)
        todo = list(range(len(records)))
        for attempt in range(2):  # the second pass only after NOSCRIPT, for the records that got it
            async with self.client.pipeline(transaction=False) as p:
                for i in todo:
                    p.evalsha(self._cas.sha, 1, args[i][0], *args[i][1])
                results = await p.execute(raise_on_error=False)
            errors = []
            for i, res in zip(todo, results):
                if isinstance(res, NoScriptError) and attempt == 0:
                    continue
                if isinstance(res, Exception):
                    errors.append(res)
                else:
                    codes[i] = _CODES[res]
            if errors:  # e.g. out of memory: written records stay written, so say so
                raise _PartlyWritten(str(errors[0])) if OK in codes else errors[0]
            todo = [i for i in todo if codes[i] is None]
            if not todo:
                break
            log.info("state store: the CAS script is not in Redis' script cache (a Redis restart or SCRIPT FLUSH); "
                     "loading it again")
            self._cas.sha = await self.client.script_load(CAS_SCRIPT)
        return codes

    async def delete(self, keys: list[tuple[str | None, str]], *, timeout: float | None = None) -> None:
        """Remove sessions (closed): one round trip."""
        if not keys:
            return

        async def unlink():
            async with self.client.pipeline(transaction=False) as p:
                for owner, sid in keys:
                    p.unlink(key(owner, sid))
                await p.execute()

        await self._bounded(unlink(), timeout)

    async def aclose(self) -> None:
        await self.client.aclose()

    def close(self) -> None:
        """Close the connections (on the running loop, if there is one)."""
        try:
            self._closing = asyncio.get_running_loop().create_task(self.aclose())
        except RuntimeError:
            asyncio.run(self.aclose())
