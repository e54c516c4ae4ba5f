"""The ghz scenarios (unary Step, StreamSteps, StepFrame of N) run alternately on the server and its ceilings.

Ceilings: the null server (pre-serialized responses, no parsing: the primary one) and the echo server
(parses the request, builds the response: the second column)."""

from __future__ import annotations

import os
import resource
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import ghz, payloads
from .procs import ROOT, Proc, descendants


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(CPU seconds of pid and its descendants, CPU seconds of pid's main thread) so far, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat(path: str) -> float:
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            return 0.0
        fields = text[text.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / tick

    return sum(stat(f"/proc/{p}/stat") for p in descendants(pid)), stat(f"/proc/{pid}/task/{pid}/stat")


def scrape(port: int) -> dict[str, float]:
    """The server's Prometheus counters we use (summed over labels); {} when there is no metrics port."""
    if not port:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    want = {"statestream_steps_total", "statestream_batch_size_sum", "statestream_batch_size_count",
            "statestream_compute_seconds_sum"}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in want:
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def batch_stats(before: dict, after: dict, seconds: float) -> dict:
    """Steps applied, mean batch size and the model's busy share between two scrapes."""
    if not before or not after:
        return {}
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    runs = d.get("statestream_batch_size_count", 0.0)
    compute = d.get("statestream_compute_seconds_sum", 0.0)
    return {"steps_applied": d.get("statestream_steps_total"),
            "mean_batch": d["statestream_batch_size_sum"] / runs if runs else None,
            "compute_us_per_batch": compute / runs * 1e6 if runs else None,
            "model_busy": d.get("statestream_compute_seconds_sum", 0.0) / seconds if seconds else None}


@dataclass
class Plan:
    """What to run: concurrencies, frame sizes, run length; and where the data files and raw reports go."""

    model: str
    features: int
    concurrencies: list[int]
    frame_sizes: list[int]
    duration: float
    stream_count: int
    ghz_cpus: int
    raw: Path
    group_sizes: list[int] = field(default_factory=list)
    frame_concurrencies: list[int] | None = None  # None: the same as `concurrencies`
    group_concurrencies: list[int] = field(default_factory=lambda: [1, 4])
    rounds: int = 1  # each (scenario, concurrency): the ceilings and the server measured this many times, alternately
    ghz: Path = field(default_factory=ghz.ensure_ghz)
    ghz_prefix: list[str] = field(default_factory=list)  # e.g. ["taskset", "-c", "1"]: ghz pinned to a core
    data: dict[str, Path] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)

    @property
    def blocks_per_size(self) -> int:
        """Distinct frames (and groups) of each size the data files cycle through: two per concurrent call, so no
        two calls in flight step the same sessions, and the same number for frames and groups, so both touch the
        same sessions' memory (the transport's c=64 must not give frames 16x the working set of groups)."""
        return max(8, 2 * max(self.frame_concurrencies or self.concurrencies), 2 * max(self.group_concurrencies))

    @property
    def frames_per_size(self) -> int:
        return self.blocks_per_size

    @property
    def groups_per_size(self) -> int:
        return self.blocks_per_size

    def sessions_needed(self) -> int:
        return (4 * sum(self.concurrencies) + self.frames_per_size * sum(self.frame_sizes)
                + self.groups_per_size * sum(self.group_sizes))

    def open_groups(self, proc: Proc) -> None:
        """Open the groups the StepGroup data names (a gateway opens its group once)."""
        from statestream.client import Client

        with Client(proc.target, timeout=60) as client:
            for n in self.group_sizes:
                for k in range(self.groups_per_size):
                    client.group(self.model, n, group_id=payloads.group_id(n, k))

    def write_data(self) -> None:
        d = self.raw / "data"
        d.mkdir(parents=True, exist_ok=True)
        self.data["unary"] = payloads.write_step(d / "step.json", self.model, self.features)
        self.data["stream"] = payloads.write_stream(d / "stream.json", self.model, self.features)
        for n in self.frame_sizes:
            self.data[f"frame{n}"] = payloads.write_frames(d / f"frame{n}.json", self.model, self.features, n,
                                                           self.frames_per_size)
        for n in self.group_sizes:
            self.data[f"group{n}"] = payloads.write_groups(d / f"group{n}.json", self.features, n, self.groups_per_size)

    def write_null_responses(self, output_size: int) -> Path:
        """The null server's pre-serialized responses, one per data file (same shapes as the server's)."""
        return payloads.null_responses(self.data, self.features, output_size, self.raw / "data" / "null_responses.json")

    def cmd(self, proc: Proc, key: str, concurrency: int, out: Path, *, duration: float | None = None,
            total: int | None = None, rps: float | None = None) -> list[str]:
        method = {"unary": "Step", "stream": "StreamSteps"}.get(key, "StepGroup" if key.startswith("group") else "StepFrame")
        return self.ghz_prefix + ghz.command(self.ghz, proc.target, method, self.data[key], concurrency=concurrency,
                           duration=duration, total=total, rps=rps,
                           stream_count=self.stream_count if key == "stream" else None, cpus=self.ghz_cpus, out=out)

    def note_command(self, label: str, cmd: list[str]) -> None:
        """Remember a copyable form: small payloads inline (-d), frames from `python -m bench.payloads`."""
        if label in self.commands:
            return
        parts = []
        for p in cmd[:-1]:
            if p.startswith(("--format", "--output", "--cpus")):
                continue
            if p.startswith("--data-file="):
                path = Path(p.split("=", 1)[1])
                if path.stat().st_size < 2048:
                    p = "-d '" + path.read_text() + "'"
                else:
                    n = int(path.stem[5:])
                    self.commands[f"{label}: data file"] = (
                        f"python -m bench.payloads frame --model {self.model} --features {self.features} "
                        f"--size {n} --frames {self.frames_per_size} --out {path.name}")
                    p = f"--data-file={path.name}"
            parts.append(p.replace(str(ROOT) + "/", ""))
        self.commands[label] = " ".join(parts + ["127.0.0.1:50051"])


def block_size(key: str) -> int | None:
    """N of a "frame256" / "group1024" scenario key; None for unary and stream."""
    for kind in ("frame", "group"):
        if key.startswith(kind):
            return int(key[len(kind):])
    return None


def _msgs(r: ghz.GhzResult, per_call: int) -> dict:
    d = r.to_dict()
    d["msgs_per_s"] = r.calls_per_s * per_call
    return d


def run_one(plan: Plan, proc: Proc, who: str, key: str, c: int, metrics_port: int = 0, **kw) -> dict:
    out = plan.raw / f"{who}-{key}-c{c}{'-' + kw['tag'] if 'tag' in kw else ''}.json"
    kw.pop("tag", None)
    cmd = plan.cmd(proc, key, c, out, duration=kw.pop("duration", plan.duration), **kw)
    before = scrape(metrics_port)
    cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = ghz.run(cmd, out)
    cpu1, wall = cpu_seconds(proc.pid), time.perf_counter() - t0
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    stats = batch_stats(before, scrape(metrics_port), r.seconds)
    # Shares of one core over the ghz run: is the server's event loop (main thread) saturated, is ghz?
    stats["cpu"] = {"process": round((cpu1[0] - cpu0[0]) / wall, 3), "main_thread": round((cpu1[1] - cpu0[1]) / wall, 3),
                    "ghz": round((kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime) / wall, 3)}
    per_call = plan.stream_count if key == "stream" else 1
    d = {**_msgs(r, per_call), **stats, "command": " ".join(cmd).replace(str(ROOT) + "/", "")}
    n = block_size(key) or per_call
    if block_size(key):
        d["frames_per_s"] = r.calls_per_s
        d["session_steps_per_s"] = r.calls_per_s * n
    applied = stats.get("steps_applied")
    if applied is not None and applied < 0.99 * r.ok * n:
        # Calls answered OK with in-band errors (frame entries, stream messages): count what was applied.
        d["inband_errors_suspected"] = True
        d["msgs_per_s" if key == "stream" else "session_steps_per_s"] = applied / r.seconds
    return d


def warm(plan: Plan, proc: Proc, who: str, key: str) -> None:
    """Open the sessions (first pass through every frame, every worker id) before anything is timed."""
    cmax = max(plan.concurrencies)
    total = plan.frames_per_size if block_size(key) else 4 * cmax
    out = plan.raw / f"{who}-{key}-warmup.json"
    ghz.run(plan.cmd(proc, key, min(cmax, 8) if block_size(key) else cmax, out, total=total), out)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def measure(plan: Plan, server: Proc, ceilings: dict[str, Proc], key: str, c: int, metrics_port: int,
            rate: str) -> dict:
    """A row of one scenario at one concurrency: the ceilings, then the server, `plan.rounds` times, and the ratio of
    the server to each ceiling. One round: each run and ratio as measured. Several: each one's run of median `rate`
    (its every round's rate in `rounds`) and each ratio the median of the rounds' own ratios (a server and its
    ceilings measured back to back share a round's slow or fast machine)."""
    runs: dict[str, list[dict]] = {who: [] for who in (*ceilings, "server")}
    for k in range(plan.rounds):
        tag = {"tag": f"r{k + 1}"} if plan.rounds > 1 else {}
        for who, proc in ceilings.items():
            runs[who].append(run_one(plan, proc, who, key, c, **tag))
        runs["server"].append(run_one(plan, server, "server", key, c, metrics_port, **tag))
    row: dict = {}
    for who, rs in runs.items():
        row[who] = dict(_median(rs, lambda r: r[rate]))
        if len(rs) > 1:
            row[who]["rounds"] = [round(r[rate]) for r in rs]
    for who in ceilings:
        row[f"ratio_{who}"] = _median([_ratio(s[rate], r[rate]) for s, r in zip(runs["server"], runs[who])],
                                      lambda q: q or 0.0) or None
    return row


def _median(items: list, key):
    """The middle item by `key` (of an even count, the upper one)."""
    return sorted(items, key=key)[len(items) // 2]


def transport(plan: Plan, server: Proc, ceilings: dict[str, Proc], metrics_port: int, log) -> list[dict]:
    """Unary and stream steps at every concurrency, the ceilings and the server alternately (noise hits all alike)."""
    rows = []
    for key in ("unary", "stream"):
        for who, proc in {"server": server, **ceilings}.items():
            warm(plan, proc, who, key)
        for c in plan.concurrencies:
            row = {"scenario": key, "concurrency": c, **measure(plan, server, ceilings, key, c, metrics_port,
                                                                "msgs_per_s")}
            s = row["server"]
            ceil = {who: row[who] for who in ceilings}
            plan.note_command({"unary": "unary Step", "stream": "StreamSteps"}[key], s["command"].split())
            row["ratio"] = row.get("ratio_null", row.get("ratio_echo"))
            rows.append(row)
            log(f"{key:7s} c={c:<3d} server {s['msgs_per_s']:9,.0f} msgs/s p50/p99 {s['p50_ms']:.2f}/{s['p99_ms']:.2f} ms | "
                + " | ".join(f"{who} {r['msgs_per_s']:9,.0f} ({row[f'ratio_{who}'] or 0:.2f}x, "
                             f"{r['p50_ms']:.2f}/{r['p99_ms']:.2f} ms)" for who, r in ceil.items())
                + f" | errors {s['errors']}")
    return rows


def frames(plan: Plan, server: Proc, ceilings: dict[str, Proc], metrics_port: int, ort: dict[int, float], log,
           kind: str = "frame") -> list[dict]:
    """StepFrame (or StepGroup) of every size at every concurrency; session-steps/s against the ceilings and ORT."""
    rows = []
    for n in plan.frame_sizes if kind == "frame" else plan.group_sizes:
        key = f"{kind}{n}"
        for who, proc in {"server": server, **ceilings}.items():
            warm(plan, proc, who, key)
        for c in (plan.frame_concurrencies or plan.concurrencies) if kind == "frame" else plan.group_concurrencies:
            row = {"size": n, "concurrency": c, **measure(plan, server, ceilings, key, c, metrics_port,
                                                          "session_steps_per_s")}
            s = row["server"]
            ceil = {who: row[who] for who in ceilings}
            plan.note_command(f"{'StepFrame' if kind == 'frame' else 'StepGroup'} of {n}", s["command"].split())
            o = ort.get(n)
            row["ort_session_steps_per_s"] = o
            row["ratio_ort"] = _ratio(s["session_steps_per_s"], o)
            rows.append(row)
            log(f"{key:<9s} c={c:<3d} server {s['session_steps_per_s']:10,.0f} session-steps/s p50/p99 "
                f"{s['p50_ms']:.2f}/{s['p99_ms']:.2f} ms batch {s.get('mean_batch') or 0:6.1f} | "
                + " | ".join(f"{who} {r['session_steps_per_s']:10,.0f} ({row[f'ratio_{who}'] or 0:.2f}x, "
                             f"{r['p50_ms']:.2f}/{r['p99_ms']:.2f} ms)" for who, r in ceil.items())
                + f" | ORT {o or 0:11,.0f} | errors {s['errors']}")
    return rows


def half_load(plan: Plan, server: Proc, ceilings: dict[str, Proc], transport_rows: list[dict], log) -> dict | None:
    """p50/p99 of one unary step with ghz held at half the best unary rate of this run, each ceiling at the same
    rate; under "stream", the same for StreamSteps calls (ghz --rps counts calls of plan.stream_count steps)."""
    out = None
    for key in ("unary", "stream"):
        rows = [r for r in transport_rows if r["scenario"] == key]
        if not rows:
            continue
        best = max(rows, key=lambda r: r["server"]["msgs_per_s"])
        per_call = plan.stream_count if key == "stream" else 1
        rps = max(1, int(best["server"]["msgs_per_s"] / 2 / per_call))
        c = best["concurrency"] if key == "stream" else max(4, best["concurrency"])
        runs = {who: run_one(plan, proc, who, key, c, rps=rps, tag="halfload", duration=max(plan.duration, 3))
                for who, proc in {"server": server, **ceilings}.items()}
        plan.note_command("StreamSteps at a fixed rate (half load)" if key == "stream"
                          else "unary at a fixed rate (half load)", runs["server"]["command"].split())
        log(f"half load, {key}: {rps:,} calls/s, c={c}: " + " | ".join(
            f"{who} p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms" for who, r in runs.items()))
        part = {"max_msgs_per_s": best["server"]["msgs_per_s"], "max_concurrency": best["concurrency"], "rps": rps,
                "concurrency": c, **runs}
        if key == "unary":
            out = part
        elif out is not None:
            out["stream"] = part
    return out
