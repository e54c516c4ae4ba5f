"""Other languages and tools against a live server: Go and Node clients, one input through three clients, grpcurl, ghz."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_tool
from serverproc import DEMO_MODEL, ROOT, ServerProcess

from statestream.client import Client
from statestream.v1 import statestream_pb2 as pb

TOOLS = ROOT / ".tools" / "bin"
GO_DIR = ROOT / "client" / "go"
NODE_DIR = ROOT / "client" / "node"
EXAMPLES = ROOT / "examples"
PROTO = ROOT / "proto" / "statestream" / "v1" / "statestream.proto"
GO_MODULE = "github.com/statestream/statestream/client/go"
TOKEN = "interop-token-0123456789"


def tool(name: str) -> str:
    """A pinned tool from .tools/bin (or go/node from PATH): fails with the installer's reason if its install failed."""
    return require_tool(name, installed_as={"go": "go-client", "node": "node-client"}.get(name))


def run(cmd: list[str], *, cwd: Path = ROOT, env: dict | None = None, timeout: float = 120) -> str:
    """Run a command; fail the test with its whole output unless it exits 0. Returns stdout."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc.stdout


def client_env(target: str, token: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if k != "STATESTREAM_TOKEN"}
    env.update(STATESTREAM_TARGET=target, TARGET=target, STATESTREAM_MODEL="demo",
               PATH=f"{TOOLS}{os.pathsep}{env.get('PATH', '')}")
    if token:
        env["STATESTREAM_TOKEN"] = token
    return env


def sensor_signal(steps: int, features: int) -> np.ndarray:
    """The examples' synthetic sensor signal (client/go/cmd/example/signal.go, client/node/src/signal.js)."""
    x = np.zeros((steps, features), np.float32)
    for t in range(steps):
        for j in range(features):
            p = (t + 10 * j) % 40
            tri = p if p < 20 else 40 - p
            x[t, j] = tri / 16 - 0.625 + ((7 * t + 3 * j) % 17) / 64 - 0.125
    return x


def bits(values) -> list[int]:
    """float32 bit patterns: equal bits, equal floats (and NaN-safe)."""
    return np.asarray(values, dtype=np.float32).ravel().view(np.uint32).tolist()


@pytest.fixture(scope="module")
def server():
    assert DEMO_MODEL.is_file(), f"{DEMO_MODEL} is missing"
    with ServerProcess([DEMO_MODEL]) as srv:
        yield srv


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text(f"# interop test\n{TOKEN}\n")
    with ServerProcess([DEMO_MODEL], "--auth-token-file", str(tokens)) as srv:
        yield srv


# -- Go -----------------------------------------------------------------------------------


def test_go_stubs_match_the_proto(tmp_path):
    """The committed Go stubs are what `make proto` generates from proto/ with the pinned plugins."""
    gen, grpc_gen = tool("protoc-gen-go"), tool("protoc-gen-go-grpc")
    run([sys.executable, "-m", "grpc_tools.protoc", "-Iproto",
         f"--plugin=protoc-gen-go={gen}", f"--go_out={tmp_path}", f"--go_opt=module={GO_MODULE}",
         f"--plugin=protoc-gen-go-grpc={grpc_gen}", f"--go-grpc_out={tmp_path}", f"--go-grpc_opt=module={GO_MODULE}",
         str(PROTO.relative_to(ROOT))])
    for name in ("statestream.pb.go", "statestream_grpc.pb.go"):
        fresh = (tmp_path / "statestreamv1" / name).read_text()
        assert (GO_DIR / "statestreamv1" / name).read_text() == fresh, f"{name} is stale: run `make proto`"


def test_go_client_tests_pass_against_a_live_server(server):
    out = run([tool("go"), "test", "-count=1", "-v", "./..."], cwd=GO_DIR, env=client_env(server.target))
    skipped = re.findall(r"--- SKIP: (\S+)", out)
    assert skipped == ["TestToken"], f"unexpected skips {skipped}:\n{out}"  # TestToken runs against auth_server
    for name in ("TestStepStreamAndSequences", "TestSetStateContinuesBitExactly", "TestExampleJSON"):
        assert f"--- PASS: {name}" in out, out


# -- Node ---------------------------------------------------------------------------------


def node_counts(out: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"^# (tests|pass|fail|skipped|cancelled) (\d+)$", out, re.M)}


def test_node_client_tests_pass_against_a_live_server(server):
    node = tool("node")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("client/node/node_modules is missing: run `make tools` (npm ci)")
    out = run([node, "--test"], cwd=NODE_DIR, env=client_env(server.target))
    counts = node_counts(out)
    assert counts.get("fail") == 0 and counts.get("cancelled") == 0, out
    assert counts.get("skipped") == 1 and "# SKIP STATESTREAM_TOKEN not set" in out, out  # the token test: auth_server
    assert counts.get("pass", 0) >= 9, out


def test_go_and_node_tests_fail_without_a_target_under_ci():
    """Under CI a missing STATESTREAM_TARGET is a failure, never a quiet skip."""
    env = {k: v for k, v in os.environ.items() if k not in ("STATESTREAM_TARGET", "STATESTREAM_NO_SKIP")}
    env["CI"] = "true"
    for cmd, cwd in (([tool("go"), "test", "-count=1", "-run", "^TestModels$", "./statestream"], GO_DIR),
                     ([tool("node"), "--test", "--test-name-pattern=ListModels"], NODE_DIR)):
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "STATESTREAM_TARGET is not set" in proc.stdout + proc.stderr, proc.stdout


# -- bearer token -------------------------------------------------------------------------


def test_go_and_node_clients_send_the_bearer_token(auth_server):
    env = client_env(auth_server.target, TOKEN)
    out = run([tool("go"), "test", "-count=1", "-v", "-run", "^(TestToken|TestExampleJSON)$", "./..."], cwd=GO_DIR, env=env)
    assert "--- PASS: TestToken" in out and "--- PASS: TestExampleJSON" in out, out
    out = run([tool("node"), "--test", "--test-name-pattern=bearer token|--json"], cwd=NODE_DIR, env=env)
    assert re.search(r"^ok \d+ - bearer token[^#\n]*$", out, re.M), out
    assert re.search(r"^ok \d+ - example\.js --json[^#\n]*$", out, re.M), out
    assert node_counts(out).get("fail") == 0, out


# -- one input, three clients -------------------------------------------------------------


def test_python_go_and_node_stream_the_same_outputs_and_states(server):
    """The same signal streamed by the Python, Go and Node clients: bit-identical outputs and final states."""
    steps = 40
    env = client_env(server.target)
    reports = {
        "go": json.loads(run([tool("go"), "run", "./cmd/example", "-json", "-steps", str(steps)], cwd=GO_DIR, env=env)),
        "node": json.loads(run([tool("node"), "example.js", "--json", "--steps", str(steps)], cwd=NODE_DIR, env=env)),
    }
    with Client(server.target) as client, client.session("demo") as s:
        x = sensor_signal(steps, s.info.features)
        outputs = np.stack(list(s.stream(x)))
        state = s.get_state()
    for lang, rep in reports.items():
        assert bits(rep["inputs"]) == bits(x), f"{lang} built another input signal"
        assert rep["step_count"] == state.step_count == steps, lang
        assert bits(rep["outputs"]) == bits(outputs), f"{lang} outputs differ from Python's"
        assert sorted(rep["states"]) == sorted(state.states), lang
        for layer, st in state.states.items():
            for name in ("h", "c"):
                assert bits(rep["states"][layer][name]) == bits(st[name]), f"{lang}: {layer}.{name} differs"
    assert reports["go"]["session_id"] != reports["node"]["session_id"]


# -- grpcurl ------------------------------------------------------------------------------


def json_documents(text: str) -> tuple[str, list]:
    """Split grpcurl's output: the leading plain lines (list), then a run of JSON documents."""
    start = text.index("{")
    docs, i, dec = [], start, json.JSONDecoder()
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        doc, i = dec.raw_decode(text, i)
        docs.append(doc)
    return text[:start], docs


def test_grpcurl_lists_through_reflection_and_calls_getmodel_and_step(server):
    tool("grpcurl")
    out = run(["bash", str(EXAMPLES / "grpcurl.sh")], env=client_env(server.target), timeout=60)
    listing, docs = json_documents(out)
    services = listing.split()
    assert "statestream.v1.StateStreamService" in services and "grpc.health.v1.Health" in services, out
    model, step = docs
    assert model["model"]["name"] == "demo" and model["model"]["features"] == 3, model
    assert [l["name"] for l in model["model"]["layers"]] == ["lstm1", "lstm2"], model
    assert step["session_id"] == "grpcurl-demo" and step["step_count"] == "1", step  # uint64 is a JSON string
    assert len(step["output"]) == model["model"]["output_size"] * step["rows"], step
    with Client(server.target) as client:  # the session Step opened is a real one
        assert client.attach("grpcurl-demo", "demo").get_state().step_count == 1


# -- ghz ----------------------------------------------------------------------------------


def ghz_json(script: str, target: str) -> tuple[dict, dict]:
    """Run one of the README's ghz scripts with -O json; returns (ghz's report, the script's -c/-n numbers)."""
    tool("ghz")
    text = (EXAMPLES / script).read_text()
    numbers = {k: int(v) for k, v in re.findall(r"(?:^|\s)-([cn]) (\d+)", text)}
    calls = re.search(r"--stream-call-count (\d+)", text)
    numbers["messages"] = int(calls.group(1)) if calls else 1
    report = json.loads(run(["bash", str(EXAMPLES / script), "-O", "json"], env=client_env(target), timeout=90))
    return report, numbers


def worker_sessions(target: str, prefix: str, workers: int) -> list[int]:
    """Step counts of ghz's per-worker sessions (worker ids g0c0, g1c0, ... with one connection)."""
    with Client(target) as client:
        return [client.call("GetState", pb.GetStateRequest(session_id=f"{prefix}g{i}c0")).state.step_count
                for i in range(workers)]


def test_ghz_unary_step_load(server):
    report, n = ghz_json("ghz-unary.sh", server.target)
    assert report["count"] == n["n"], report["count"]
    assert report["statusCodeDistribution"] == {"OK": n["n"]}, report["statusCodeDistribution"]
    assert not report["errorDistribution"], report["errorDistribution"]
    counts = worker_sessions(server.target, "ghz-", n["c"])
    assert sum(counts) == n["n"] and min(counts) > 0, counts  # every call stepped its worker's own session once


def test_ghz_streaming_load(server):
    report, n = ghz_json("ghz-stream.sh", server.target)
    assert report["count"] == n["n"], report["count"]
    assert report["statusCodeDistribution"] == {"OK": n["n"]}, report["statusCodeDistribution"]
    assert not report["errorDistribution"], report["errorDistribution"]
    counts = worker_sessions(server.target, "ghz-stream-", n["c"])
    assert sum(counts) == n["n"] * n["messages"] and min(counts) > 0, counts  # no in-band errors either


def test_example_scripts_use_a_target_placeholder():
    for script in ("grpcurl.sh", "ghz-unary.sh", "ghz-stream.sh"):
        text = (EXAMPLES / script).read_text()
        assert 'TARGET="${TARGET:-localhost:50051}"' in text and '"$TARGET"' in text, script
