"""--state-store: what each store promises (the help), parsing a spec, and opening the store it names."""

from __future__ import annotations

from statestream.server.store.base import DEFAULT_TIMEOUT, StateStore

STORE_HELP = (
    "where session state lives: memory | sqlite:PATH | redis://HOST:PORT/DB. "
    "memory: this process only; a restart loses every session. "
    "sqlite:PATH: a file on this machine, one transaction per batch before the answer; survives kill -9 of the "
    "server, an OS crash may lose the last commits (synchronous=NORMAL); one server holds the file exclusively, "
    "--workers share it with compare-and-set; a removed or replaced file stops every write (UNAVAILABLE, health "
    "NOT_SERVING) until a restart. redis://: shared by every replica and worker (the local table is a cache, "
    "compare-and-set per session, idle expiry as a Redis TTL); a step is answered after Redis acknowledged it, and "
    "what survives a crash is what Redis promises: a clean Redis restart loses nothing; AOF appendfsync always loses "
    "no acknowledged step even on a crash of Redis or its machine; AOF everysec (Redis' default) may lose the last "
    "1-2 s of acknowledged steps on a crash of the redis process (it postpones AOF writes while a slow fsync "
    "runs) or of its machine; without persistence a Redis restart loses every session")


def check_spec(spec: str) -> tuple[str, str]:
    """(`memory`, ""), (`sqlite`, PATH) or (`redis`, URL); anything else is refused with the choices."""
    if spec == "memory":
        return "memory", ""
    if spec.startswith("sqlite:") and len(spec) > len("sqlite:"):
        return "sqlite", spec[len("sqlite:"):]
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from statestream.server.store.redis import check_url
        return "redis", check_url(spec)
    raise ValueError(f"--state-store {spec!r}: expected memory, sqlite:PATH or redis://HOST:PORT/DB")


def open_store(spec: str, shared: bool = False, timeout: float | None = DEFAULT_TIMEOUT) -> StateStore:
    """The StateStore named by --state-store; `shared`: several worker processes use it (--workers > 1);
    `timeout`: the default bound of one store call, seconds (--store-timeout)."""
    kind, where = check_spec(spec)
    if kind == "redis":
        from statestream.server.store.redis import RedisStore  # redis-py is imported only when it is used
        return RedisStore(where, timeout=timeout)
    if kind == "sqlite":
        from statestream.server.store.sqlite import SqliteStore
        return SqliteStore(where, shared=shared, timeout=timeout)
    from statestream.server.store.memory import MemoryStore
    return MemoryStore()
