"""A real statestream-server process on a loopback port, for tests."""

from __future__ import annotations

import sys
from pathlib import Path

from support import process

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "models" / "demo.onnx"


class ServerProcess(process.ServerProcess):
    """`statestream-server --port 0` on loopback; knows its port once it is SERVING.

    with ServerProcess([model_path], "--max-sessions", "10") as srv:
        Client(srv.target) ...
    """

    def __init__(self, models, *args: str, env: dict | None = None, wait_serving: bool = True, timeout: float = 60):
        models = [str(m) for m in (models if isinstance(models, (list, tuple)) else [models])]
        super().__init__([sys.executable, "-m", "statestream.server.app.main", "--models", *models, "--port", "0",
                          "--host", "127.0.0.1", *args], name="statestream-server", env=env, cwd=ROOT,
                         wait_serving=wait_serving, timeout=timeout)
