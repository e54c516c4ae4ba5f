"""The bench harness itself works: null and echo servers + tiny ghz runs + ORT ceiling + the result writer.

No timing is asserted (timing goals live in bench/results, from `make bench`); only that every
piece runs and writes the files and fields the report promises, with positive numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a package at the repo root, not an installed one
    sys.path.insert(0, str(ROOT))

from bench import compute, ghz, payloads, report  # noqa: E402
from bench.procs import echo_server, null_server  # noqa: E402

DEMO = ROOT / "models" / "demo.onnx"


@pytest.fixture(scope="module")
def ghz_path() -> Path:
    return ghz.ensure_ghz()  # .tools/bin/ghz from `make tools`, else `go install` of the pinned version


def _run(ghz_path: Path, target: str, method: str, data: Path, out: Path, **kw) -> dict:
    cmd = ghz.command(ghz_path, target, method, data, concurrency=2, total=20, cpus=1, out=out, **kw)
    r = ghz.run(cmd, out).to_dict()
    r["msgs_per_s"] = r["calls_per_s"] * kw.get("stream_count", 1)
    return r


def test_echo_ghz_and_writer(tmp_path: Path, ghz_path: Path):
    _, man = compute.load(DEMO)
    step = payloads.write_step(tmp_path / "step.json", man.name, man.features)
    stream = payloads.write_stream(tmp_path / "stream.json", man.name, man.features)
    frame = payloads.write_frames(tmp_path / "frame16.json", man.name, man.features, 16, 4)
    data = {"unary": step, "stream": stream, "frame16": frame}
    responses = payloads.null_responses(data, man.features, man.output_size, tmp_path / "null.json")
    with echo_server(man.features, man.output_size) as echo:
        unary = _run(ghz_path, echo.target, "Step", step, tmp_path / "u.json")
        streamed = _run(ghz_path, echo.target, "StreamSteps", stream, tmp_path / "s.json", stream_count=5)
        framed = _run(ghz_path, echo.target, "StepFrame", frame, tmp_path / "f.json")
    with null_server(responses) as null:
        nulls = [_run(ghz_path, null.target, "Step", step, tmp_path / "nu.json"),
                 _run(ghz_path, null.target, "StreamSteps", stream, tmp_path / "ns.json", stream_count=5),
                 _run(ghz_path, null.target, "StepFrame", frame, tmp_path / "nf.json")]
    for r in (unary, streamed, framed, *nulls):
        assert r["ok"] == 20 and r["errors"] == 0, r
        assert r["calls_per_s"] > 0 and r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"]
    framed.update(frames_per_s=framed["calls_per_s"], session_steps_per_s=framed["calls_per_s"] * 16)

    ort = [o.to_dict() for o in compute.ort_ceiling(DEMO, [1, 16], seconds=0.05)]
    assert all(o["session_steps_per_s"] > 0 and o["us_per_run"] > 0 for o in ort)

    # The writer, fed with the echo's figures standing in for the server's.
    res = {
        "meta": {"date": "smoke", "model": "models/demo.onnx", "model_shape": "demo", "cpus": 2, "loadavg": "0",
                 "ghz_version": ghz.GHZ_VERSION, "ghz_cpus": 1, "duration": 0, "stream_count": 5,
                 "server_cmd": "echo", "notes": []},
        "ort": ort,
        "transport": [{"scenario": s, "concurrency": c, "server": r, "null": r, "echo": r, "ratio": 1.0,
                       "ratio_null": 1.0, "ratio_echo": 1.0}
                      for s, r in (("unary", unary), ("stream", streamed)) for c in (1, 2)],
        "frames": [{"size": 16, "concurrency": c, "server": framed, "null": framed, "echo": framed, "ratio_echo": 1.0,
                    "ratio_null": 1.0,
                    "ort_session_steps_per_s": ort[1]["session_steps_per_s"],
                    "ratio_ort": framed["session_steps_per_s"] / ort[1]["session_steps_per_s"]} for c in (1, 2)],
        "half_load": {"max_msgs_per_s": unary["msgs_per_s"], "max_concurrency": 2, "rps": 10, "concurrency": 2,
                      "server": unary, "null": unary,
                      "stream": {"max_msgs_per_s": streamed["msgs_per_s"], "max_concurrency": 2, "rps": 2,
                                 "concurrency": 2, "server": streamed, "null": nulls[1]}},
        "memory": {"method": "smoke", "points": [
            {"sessions": 0, "rss_bytes": 1e8, "open_seconds": 0.0},
            {"sessions": 1_000_000, "rss_bytes": 1.5e9, "open_seconds": 1.0, "bytes_per_session": 1400.0}]},
        "keras": {"skipped": "smoke"},
        "commands": {"unary Step": "ghz ..."},
    }
    out = tmp_path / "results"
    md = report.write(res, out)
    for name in ("results.md", "results.json", "throughput_vs_concurrency.png", "latency_vs_concurrency.png",
                 "throughput_vs_frame_size.png", "latency_vs_frame_size.png"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "results.json").read_text())
    assert {t["result"] for t in data["targets"]} <= {"PASS", "MISS", "n/a"}
    assert len(data["targets"]) == 6
    assert "## Targets" in md and "| unary | 1 |" in md
    # Every rate has its p50 and p99 beside it: the ceilings' too, and streams at half load.
    assert f"| {unary['p50_ms']:.2f} / {unary['p99_ms']:.2f} |" in md  # the null column of the steps table
    assert f"| a stream | null | {nulls[1]['msgs_per_s']:,.0f} | {nulls[1]['p50_ms']:.2f} |" in md


def test_scaleout_commit_cost_and_report(tmp_path: Path):
    from redisproc import RedisProcess

    from bench import scaleout

    with RedisProcess() as r:
        commits = scaleout.commit_costs(r.url, tmp_path, 2, 64, batches=(1, 16))
    assert [(c["store"].split(":")[0].split(" ")[0], c["batch"], c["tagged"]) for c in commits] == \
        [("sqlite", 1, False), ("sqlite", 16, False), ("redis", 1, False), ("redis", 16, False), ("redis", 16, True)]
    assert all(c["us_per_commit"] > 0 and c["commits"] >= 3 and c["repeats"] == 2 for c in commits)
    row = {"store": "memory", "workers": 1, "load": "unary", "concurrency": 16, "connections": 8,
           "session_steps_per_s": 1000.0, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0, "vs_memory_1": 1.0,
           "vs_same_store_1": 1.0}
    md = scaleout.report({"meta": {"date": "now", "cpus": 2, "loadavg": "0", "duration": 1, "redis": "7"},
                          "commits": commits, "throughput": [row]})
    assert "| unary c=16, 8 conns | memory | 1 | 1,000 | 1.00x | 1.00x |" in md
    assert md.count("| redis: pre-packed EVALSHA pipeline |") == 3 and "| one hash tag | 16 |" in md


def test_redis_commit_report_and_tagged_frames(tmp_path: Path):
    from bench import payloads, redis_commit

    frames = payloads.write_frames(tmp_path / "frame4.json", "demo", 3, 4, 2)
    tagged = json.loads(redis_commit.tagged_frames(frames).read_text())
    assert [f["session_ids"][:2] for f in tagged] == [["{t0}f4-0-0", "{t0}f4-0-1"], ["{t1}f4-1-0", "{t1}f4-1-1"]]
    row = {"store": "redis", "tagged": False, "batch": 256, "us_per_commit": 1024.0, "cpu_us_per_session": 4.0,
           "wall_us_per_session": 9.0, "redis_cpu_us_per_session": 5.0}
    res = {"meta": {"date": "now", "cpus": 2, "loadavg": "0", "duration": 1, "redis": "7", "repeats": 3,
                    "command": "python -m bench.redis_commit"},
           "commits": [row, {**row, "tagged": True, "cpu_us_per_session": 6.0, "redis_cpu_us_per_session": 2.5}],
           "frames": {"rates": {"memory": [400_000.0], "redis": [40_000.0]},
                      "median": {"memory": 400_000.0, "redis": 40_000.0}, "vs_memory": {"memory": 1.0, "redis": 0.1},
                      "server_cpu_us": {"memory": 2.5, "redis": 12.25}}}
    md = redis_commit.report(res)
    assert "| redis | untagged | 256 | 1,024 | 4.00 | 9.0 | 5.00 | PASS |" in md
    assert "| redis | one hash tag | 256 | 1,024 | 6.00 | 9.0 | 2.50 | MISS |" in md
    assert "| redis | 40,000 | 40,000 | 0.10x | 12.25 | MISS |" in md
    # redis-server runs every compare-and-set on one thread: 5 us each -> 200,000/s at most, half of memory
    assert "untagged: redis-server 5.00 us of its own CPU per session -> at most 200,000 session-steps/s" in md
    assert "= **0.50x** memory (400,000)" in md and "= **1.00x** memory" in md


def test_hotpath_times_each_handler_in_process(capsys):
    """bench.hotpath (the server's CPU per call, no gRPC) runs the real handlers: each scenario answers, and a
    handler that failed would raise instead of printing a row."""
    from bench import hotpath

    assert hotpath.main(["--sizes", "16", "--seconds", "0.05", "--floor"]) == 0
    out = capsys.readouterr().out
    assert "event loop: uvloop" in out  # the server's own loop (the dev install has uvloop)
    rows = [line.split() for line in out.splitlines() if "us/call" in line]
    assert [r[0] for r in rows] == ["step-raw", "step-floats", "stream100", "streams16", "frame16", "frame16-floats",
                                    "group16"]
    assert all(float(r[1]) > 0 for r in rows)
    # Beside each, the floor server's handler on the same requests (bench.floor_server), and the ratio.
    assert all(r[8] == "floor" and float(r[9]) > 0 and r[-1].endswith("x") for r in rows), rows
    # --evict: each call timed alone, after other memory was touched (cold caches, as at the wire)
    assert hotpath.main(["--only", "step-raw", "--evict", "256", "--seconds", "0.05", "--floor"]) == 0
    cold = [line.split() for line in capsys.readouterr().out.splitlines() if "us/call" in line]
    assert [r[0] for r in cold] == ["step-raw"] and float(cold[0][1]) > 0 and float(cold[0][9]) > 0


def test_instructions_counts_the_bytecodes_of_the_real_handlers(capsys):
    """bench.instructions runs N calls of a hotpath scenario; --bytecodes attributes them to the engine's functions
    (a unary step goes through Engine._one and Batcher._run_alone)."""
    from bench import instructions

    assert instructions.main(["step-raw", "3", "--bytecodes"]) == 0
    out = capsys.readouterr().out
    total = int(out.splitlines()[0].split(": ")[1].split()[0])
    assert total > 100
    assert "engine.py:Engine._one" in out and "batcher.py:Batcher._run_alone" in out
    assert instructions.main(["group256", "2"]) == 0
    assert "us of loop-thread CPU each" in capsys.readouterr().out


@pytest.mark.parametrize("floor", [False, True], ids=["server", "floor"])
def test_wire_reads_each_server_threads_cpu_per_call_under_ghz(tmp_path: Path, ghz_path: Path, floor: bool):
    """bench.wire (cpu): the real server (and, --floor, the floor server) under a short ghz run of group and frame
    steps; CPU per call by thread, the event loop's among them."""
    from bench import wire

    rows = wire.cpu(DEMO, ["group16", "frame16"], 2, [], tmp_path, duration=0.5, floor=floor)
    assert [r["scenario"] for r in rows] == ["group16", "frame16"]
    for r in rows:
        assert r["calls_per_s"] > 0 and r["session_steps_per_s"] == pytest.approx(16 * r["calls_per_s"], rel=0.05)
        loop = [t for name, t in r["threads"].items() if name.endswith("(event loop)")]
        assert len(loop) == 1 and loop[0]["user_us"] + loop[0]["sys_us"] > 0


def test_gctrace_counts_a_servers_collections_and_the_freeze_shrinks_a_full_one(tmp_path: Path, ghz_path: Path):
    """bench.latency's instrument: a server under bench.gctrace answers SIGUSR1 with its collections so far (more
    after a ghz run than before), and the start-up freeze leaves a full collection far fewer objects to walk."""
    from bench import latency

    _, man = compute.load(DEMO)
    step = payloads.write_step(tmp_path / "step.json", man.name, man.features)
    with latency.variant_server(DEMO, "default", "--max-sessions", "100") as srv:
        before = latency.gc_totals(srv)
        for i in range(3):
            _run(ghz_path, srv.target, "Step", step, tmp_path / f"u{i}.json")
        after = latency.gc_totals(srv)
    assert before["frozen"] > 10_000 and after["frozen"] == before["frozen"], (before, after)
    delta = latency.gc_delta(before, after)
    assert sum(delta[g]["n"] for g in ("0", "1", "2")) > 0, delta  # 60 calls allocate: young collections ran

    import subprocess

    out = subprocess.run([sys.executable, "-m", "bench.gctrace", "--full-collection", str(DEMO)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    cost = json.loads(out.strip().splitlines()[-1])
    assert cost["frozen before start"]["tracked"] * 10 < cost["nothing frozen"]["tracked"], cost


def test_rowfeeds_runs_each_layout_and_they_agree(capsys):
    """bench.rowfeeds: the three ways of feeding a run its states (tensors, per-tensor parts, the rows graph) each
    run a group step and a frame, and give the same new states for the same slab."""
    from bench import rowfeeds

    assert rowfeeds.main(["--sizes", "16", "--rounds", "1"]) == 0
    rows = [line.split("  ")[1].strip() for line in capsys.readouterr().out.splitlines() if "us " in line]
    assert rows == ["onnxruntime alone", "group: tensors", "group: parts", "group: rows", "frame: tensors",
                    "frame: parts", "frame: rows"]
    assert rowfeeds.agree(DEMO, 16)


def test_redis_scripts_runs_every_way_of_writing_against_a_real_redis():
    """bench.redis_scripts: each script variant loads and answers every key "ok" (measure asserts it), and every
    way of writing costs redis-server some CPU; the report puts each against the store's script."""
    from bench import redis_scripts

    us = redis_scripts.measure(rounds=1, commits=2, aof=False)
    assert set(us) == {*redis_scripts.SCRIPTS, *redis_scripts.PLAIN} and all(v[0] > 0 for v in us.values())
    md = redis_scripts.report({"meta": {"date": "now", "cpus": 2, "aof": False, "rounds": 1, "commits": 2,
                                        "command": "python -m bench.redis_scripts"},
                               "us": {**{name: [2.0] for name in us}, "store CAS script": [4.0]}})
    assert "| store CAS script | 4.00 | 4.00 | 1.00x |" in md and "| MSET | 2.00 | 2.00 | 0.50x |" in md


def test_inprocess_times_the_servers_group_handler():
    """bench.serial's in-process part: the real StepGroup handler (bench.hotpath's) answers and is timed."""
    from bench import inprocess

    assert inprocess.handler_cpu(DEMO, 0.05) > 0


def test_idle_gap_bench_runs():
    """`python -m bench.idle` times both one-timestep graphs back to back and after idle gaps (no timing
    asserted)."""
    from bench.idle import after_gaps

    best = after_gaps(DEMO, 8, [0, 100], rounds=1, runs=5)
    assert set(best) == {(g, gap) for g in ("rows graph", "one-timestep graph") for gap in (0, 100)}
    assert min(best.values()) > 0


def test_rounds_alternate_server_and_ceiling_and_keep_medians(tmp_path: Path, ghz_path: Path):
    """bench.run --rounds: each round runs the ceiling, then the server; the row keeps each one's median run with
    every round's rate, and the ratio is the median of the rounds' own ratios."""
    from bench import scenarios

    _, man = compute.load(DEMO)
    plan = scenarios.Plan(model=man.name, features=man.features, concurrencies=[1], frame_sizes=[], duration=0.3,
                          stream_count=5, ghz_cpus=1, raw=tmp_path, rounds=3, ghz=ghz_path)
    plan.write_data()
    responses = plan.write_null_responses(man.output_size)
    with echo_server(man.features, man.output_size) as echo, null_server(responses) as null:
        row = scenarios.measure(plan, echo, {"null": null}, "unary", 1, 0, "msgs_per_s")
    runs = sorted(tmp_path.glob("*-unary-c1-r*.json"))
    assert [p.name for p in runs] == [f"{who}-unary-c1-r{k}.json" for who in ("null", "server") for k in (1, 2, 3)]
    for who in ("server", "null"):
        rates = row[who]["rounds"]
        assert len(rates) == 3 and round(row[who]["msgs_per_s"]) == sorted(rates)[1]
    paired = sorted(s / n for s, n in zip(row["server"]["rounds"], row["null"]["rounds"]))
    assert row["ratio_null"] == pytest.approx(paired[1], rel=1e-3)


def test_ab_runs_each_versions_hotpath_on_uvloop():
    """bench.ab times both versions' own bench.hotpath on the server's loop, also one that predates its --loop (it
    sets uvloop's policy, which asyncio.run follows)."""
    import subprocess

    from bench import ab

    out = subprocess.run([sys.executable, "-c", ab._ON_UVLOOP, "--only", "step-raw", "--seconds", "0.05"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "event loop: uvloop" in out and "step-raw" in out
    policy = subprocess.run([sys.executable, "-c", ab._ON_UVLOOP.replace(
        "runpy.run_module('bench.hotpath', run_name='__main__', alter_sys=True)",
        "print(type(asyncio.new_event_loop()).__module__)")], capture_output=True, text=True, check=True).stdout
    assert policy.startswith("uvloop")  # what an older hotpath's asyncio.run gets
