"""The committed stubs are what `make proto` generates, and the contract follows buf STANDARD names."""

from __future__ import annotations

import subprocess
import sys

import pytest
from serverproc import ROOT

from statestream.v1 import statestream_pb2 as pb

PROTO = "statestream/v1/statestream.proto"


# (proto file, generated files): Triton's model_config.proto has no service, so no _grpc module.
STUBS = [
    (PROTO, ["statestream/v1/statestream_pb2.py", "statestream/v1/statestream_pb2.pyi",
             "statestream/v1/statestream_pb2_grpc.py"]),
    ("statestream/inference/model_config.proto", ["statestream/inference/model_config_pb2.py",
                                                  "statestream/inference/model_config_pb2.pyi"]),
    ("statestream/inference/grpc_service.proto", ["statestream/inference/grpc_service_pb2.py",
                                                  "statestream/inference/grpc_service_pb2.pyi",
                                                  "statestream/inference/grpc_service_pb2_grpc.py"]),
]


@pytest.mark.parametrize("proto,generated", STUBS, ids=[p for p, _ in STUBS])
def test_committed_python_stubs_are_fresh(tmp_path, proto, generated):
    grpc_out = [f"--grpc_python_out={tmp_path}"] if any(g.endswith("_grpc.py") for g in generated) else []
    r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}",
                        f"--pyi_out={tmp_path}", *grpc_out, str(ROOT / "proto" / proto)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    made = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.py*"))
    assert made == sorted(generated), f"protoc made {made}"
    for name in generated:
        fresh = (tmp_path / name).read_text()
        committed = (ROOT / "client" / name).read_text()
        assert fresh == committed, f"client/{name} is stale: run `make proto` and commit"


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
