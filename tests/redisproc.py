"""redis-server for tests: skips locally, FAILS under CI when it is missing (`make tools` installs it)."""

from __future__ import annotations

import shutil

import pytest

from conftest import NO_SKIP
from statestream.server import redis_process


def require_redis_server() -> str:
    """The redis-server binary; skips locally, fails under CI."""
    path = shutil.which("redis-server")
    if path is None:
        msg = "redis-server is not installed (run `make tools`: it installs the Debian package)"
        if NO_SKIP:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


class RedisProcess(redis_process.RedisProcess):
    """statestream.server.redis_process.RedisProcess that skips (locally) or fails (CI) without redis-server."""

    def start(self, timeout: float = 20) -> "RedisProcess":
        require_redis_server()
        return super().start(timeout)


@pytest.fixture
def redis_proc():
    """A fresh redis-server for one test."""
    with RedisProcess() as r:
        yield r
