"""The committed stubs are what `make proto` generates, and the contract follows buf STANDARD names."""

from __future__ import annotations

import subprocess
import sys

from serverproc import ROOT
from statestream.v1 import statestream_pb2 as pb

PROTO = "statestream/v1/statestream.proto"


def test_committed_python_stubs_are_fresh(tmp_path):
    r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}",
                        f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", str(ROOT / "proto" / PROTO)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in ("statestream_pb2.py", "statestream_pb2.pyi", "statestream_pb2_grpc.py"):
        fresh = (tmp_path / "statestream" / "v1" / name).read_text()
        committed = (ROOT / "client" / "statestream" / "v1" / name).read_text()
        assert fresh == committed, f"client/statestream/v1/{name} is stale: run `make proto` and commit"


def test_buf_standard_naming():
    service = pb.DESCRIPTOR.services_by_name["StateStreamService"]
    assert pb.DESCRIPTOR.package == "statestream.v1"
    for m in service.methods:
        assert m.input_type.name == f"{m.name}Request", m.name
        assert m.output_type.name == f"{m.name}Response", m.name
    for enum in pb.DESCRIPTOR.enum_types_by_name.values():
        assert enum.values[0].number == 0 and enum.values[0].name.endswith("_UNSPECIFIED")
    for msg in pb.DESCRIPTOR.message_types_by_name.values():
        for f in msg.fields:
            assert f.name == f.name.lower(), f"{msg.name}.{f.name} is not snake_case"
