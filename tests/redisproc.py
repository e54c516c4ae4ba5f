"""redis-server for tests: skips locally, FAILS under CI when it is missing (`make tools` installs it)."""

from __future__ import annotations

import pytest
from conftest import require_tool
from support import redis_process


def require_redis_server() -> str:
    """The redis-server binary; skips locally, fails under CI."""
    return require_tool("redis-server")


class RedisProcess(redis_process.RedisProcess):
    """tests.support.redis_process.RedisProcess that skips (locally) or fails (CI) without redis-server."""

    def start(self, timeout: float = 20) -> "RedisProcess":
        require_redis_server()
        return super().start(timeout)


@pytest.fixture
def redis_proc():
    """A fresh redis-server for one test."""
    with RedisProcess() as r:
        yield r
