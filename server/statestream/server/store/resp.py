"""A small asyncio Redis client for the Redis store: a whole pipeline is one write, its replies one hiredis parse.

redis-py's asyncio pipeline packs every command in Python and reads every reply through its own coroutine
(redis-py #4176); at 256 commands a batch that is most of a commit's CPU. Here a caller hands over the
pipeline already packed (RESP bytes, `command`), `Pool.roundtrip` writes it at once and one `hiredis.Reader`
fed from the socket yields the replies. Errors are redis-py's exception classes, so callers map them as before:
`redis.ConnectionError` (connection refused or lost: retryable, every caller's commands are idempotent),
`redis.ResponseError` (a Redis error reply: returned in the reply list, not raised, like a pipeline's
`raise_on_error=False`). A connection whose round trip fails or is cancelled (a timeout) is closed: a reply
that arrives later can never be read as the answer to another call.
"""

from __future__ import annotations

import asyncio
import ssl

import hiredis
import redis
from redis.connection import parse_url

KEEP_IDLE = 8  # connections kept open between calls (more are opened when calls overlap, then closed)


def bulk(arg: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(arg), arg)


def command(*args: bytes | str | int) -> bytes:
    """One command as RESP bytes (str as UTF-8, int in decimal)."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        parts.append(bulk(a if isinstance(a, bytes) else str(a).encode()))
    return b"".join(parts)


def hash_tag(key: bytes) -> bytes | None:
    """The key's Redis Cluster hash tag (between the first '{' and the next '}', not empty), or None: keys with the
    same tag are in the same Cluster slot, so one script may touch them all."""
    start = key.find(b"{")
    if start < 0:
        return None
    end = key.find(b"}", start + 1)
    return key[start + 1:end] if end > start + 1 else None


class _Protocol(asyncio.Protocol):
    """Feeds everything received to one hiredis.Reader; completes the waiting round trip when its replies are in."""

    def __init__(self):
        self.parser = hiredis.Reader(replyError=redis.ResponseError, protocolError=redis.InvalidResponse)
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self.waiter: asyncio.Future | None = None
        self.replies: list = []
        self.want = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        try:
            while (reply := self.parser.gets()) is not False:
                if self.waiter is None or self.waiter.done():
                    raise redis.InvalidResponse("a reply nobody waits for")
                self.replies.append(reply)
                if len(self.replies) == self.want:
                    self.waiter.set_result(self.replies)
        except redis.RedisError as e:
            self._fail(e)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(redis.ConnectionError(f"the connection to Redis was lost ({exc or 'closed by the server'})"))

    def _fail(self, e: Exception) -> None:
        self.lost = self.lost or e
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(e)


class Connection:
    """One connection; one round trip at a time (the pool hands it to one caller)."""

    def __init__(self, protocol: _Protocol):
        self._p = protocol

    @property
    def usable(self) -> bool:
        return self._p.lost is None

    async def roundtrip(self, data: bytes, n: int) -> list:
        """Write `data` (n commands) and return their n replies (error replies as redis.ResponseError)."""
        p = self._p
        if p.lost is not None:
            raise p.lost
        p.replies, p.want = [], n
        p.waiter = asyncio.get_running_loop().create_future()
        p.transport.write(data)
        return await p.waiter

    def close(self) -> None:
        self._p.lost = self._p.lost or redis.ConnectionError("closed")
        try:
            self._p.transport.close()
        except RuntimeError:  # its event loop is closed already (a store closed after asyncio.run returned)
            pass


class Pool:
    """Connections to the Redis of `url` (redis://, rediss://, unix://; user, password and database from the URL).

    `roundtrip` takes an idle connection (or opens one, bounded by `connect_timeout`), runs one round trip on
    it and gives it back; a connection whose round trip raised or was cancelled is closed instead."""

    def __init__(self, url: str, connect_timeout: float):
        self._params = parse_url(url)
        self._where = self._params.get("path") or f"{self._params.get('host')}:{self._params.get('port', 6379)}"
        self._connect_timeout = connect_timeout
        self._idle: list[Connection] = []

    async def _open(self) -> Connection:
        loop, p = asyncio.get_running_loop(), self._params
        if "path" in p:
            opening = loop.create_unix_connection(_Protocol, p["path"])
        else:
            tls = ssl.create_default_context() if p.get("connection_class") is redis.SSLConnection else None
            opening = loop.create_connection(_Protocol, p["host"], p.get("port", 6379), ssl=tls)
        try:
            _, protocol = await asyncio.wait_for(opening, self._connect_timeout)
        except (OSError, TimeoutError) as e:
            raise redis.ConnectionError(f"Error connecting to {self._where}: {e or 'timed out'}") from None
        conn = Connection(protocol)
        hello = []
        if p.get("password") is not None:
            hello.append(command("AUTH", *([p["username"]] if p.get("username") else []), p["password"]))
        if p.get("db"):
            hello.append(command("SELECT", p["db"]))
        if hello:
            try:
                for reply in await conn.roundtrip(b"".join(hello), len(hello)):
                    if isinstance(reply, redis.ResponseError):
                        raise redis.ConnectionError(f"Error connecting to {self._where}: {reply}")
            except BaseException:
                conn.close()
                raise
        return conn

    async def roundtrip(self, data: bytes, n: int) -> list:
        conn = None
        while self._idle and conn is None:
            conn = self._idle.pop()
            conn = conn if conn.usable else None
        conn = conn or await self._open()
        try:
            replies = await conn.roundtrip(data, n)
        except BaseException:
            conn.close()
            raise
        if len(self._idle) < KEEP_IDLE:
            self._idle.append(conn)
        else:
            conn.close()
        return replies

    def clear(self) -> None:
        """Close every idle connection (after a connection error: the others are likely broken too)."""
        while self._idle:
            self._idle.pop().close()

