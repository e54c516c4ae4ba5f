"""Start-up: the port answers health NOT_SERVING (and RPCs UNAVAILABLE) until every model is loaded."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serverproc import DEMO_MODEL, ROOT

from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as pb_grpc


def test_not_serving_until_models_are_loaded(tmp_path):
    for i in range(60):  # enough models that loading takes a while
        os.symlink(DEMO_MODEL, tmp_path / f"m{i:02d}.onnx")
    proc = subprocess.Popen([sys.executable, "-m", "statestream.server.app.main", "--models", str(tmp_path), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        port = None
        for line in proc.stdout:
            m = re.search(r"bound 127\.0\.0\.1:(\d+); loading models", line)
            if m:
                port = int(m.group(1))
                break
        assert port, "the server never said it was bound"
        seen, loading_error = [], None
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            stub = pb_grpc.StateStreamServiceStub(ch)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                seen.append(status)
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
                try:
                    stub.ListModels(pb.ListModelsRequest(), timeout=5)
                except grpc.RpcError as e:
                    loading_error = e
            assert len(stub.ListModels(pb.ListModelsRequest(), timeout=5).models) == 60
        assert seen[0] == health_pb2.HealthCheckResponse.NOT_SERVING
        assert seen[-1] == health_pb2.HealthCheckResponse.SERVING
        assert loading_error is not None and loading_error.code() == grpc.StatusCode.UNAVAILABLE
        assert "still loading" in loading_error.details()
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
