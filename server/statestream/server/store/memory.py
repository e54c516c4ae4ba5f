"""MemoryStore: sessions live in this process only (the default)."""

from __future__ import annotations

from statestream.server.store.base import OK, Records, SessionRecord


class MemoryStore:
    """The default: sessions live in the process only; a restart starts empty. Nothing to compare: all "ok"."""

    durable = False
    shared = False
    description = "memory: sessions live in this process only; a restart or crash loses them"

    def load(self) -> list[SessionRecord]:
        return []

    async def fetch(self, owner: str | None, sid: str, *, timeout: float | None = None) -> SessionRecord | None:
        return None

    async def fetch_many(self, keys: list[tuple[str | None, str]], *,
                         timeout: float | None = None) -> list[SessionRecord | None]:
        return [None] * len(keys)

    async def create(self, rec: SessionRecord, *, timeout: float | None = None) -> bool:
        return True

    async def commit(self, records: Records | list[SessionRecord], *, timeout: float | None = None) -> list[str]:
        return [OK] * len(records)

    async def delete(self, keys: list[tuple[str | None, str]], *, timeout: float | None = None) -> None:
        return None

    async def check(self) -> str | None:
        return None

    def close(self) -> None:
        return None
