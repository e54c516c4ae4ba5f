"""The targets of issues 12 and 18 (throughput per core), PASS/MISS with margins, from the figures of one bench run.

Issue 18's ratios to the null server come with their bound: the floor server's ratio to the null server in the
same run (bench.floor_server: the model run on each session's state row and nothing else). A target above its
bound is out of reach for any server of this design on this machine, whatever its engine does."""

from __future__ import annotations

GB = 1e9

STEP_RATIO = 0.8                    # unary Step / StreamSteps vs the null server
STEP_CONCURRENCY = {"unary": (1, 4), "stream": (1, 16)}
GROUP_RATIO = 0.6                   # group steps vs the null server of the same bytes
GROUP_STEPS = {256: 350_000, 1024: 500_000}
REALISTIC_RATIO = 0.8               # realistic model: server vs onnxruntime in-process, same batch
MEMORY_SESSIONS = 1_000_000
MEMORY_BYTES = 1 * GB
HALF_LOAD_P99_MS = 2.0              # kept from issue 4, for the plot


def _target(name: str, want: str, measured: str, ok: bool | None, margin: str, why: str = "") -> dict:
    return {"target": name, "wanted": want, "measured": measured,
            "result": "n/a" if ok is None else ("PASS" if ok else "MISS"), "margin": margin, "note": why}


def _missing(name: str, want: str, why: str = "not measured") -> dict:
    return _target(name, want, "-", None, "", why)


def _pct(v: float, want: float) -> str:
    return f"{100 * (v / want - 1):+.0f}%"


def _steps(res: dict) -> list[dict]:
    out = []
    for scenario, label in (("unary", "unary Step"), ("stream", "StreamSteps")):
        cs = STEP_CONCURRENCY[scenario]
        name = f"{label} >= {STEP_RATIO} x null server at c={' and '.join(map(str, cs))}"
        rows = [r for r in res.get("transport", []) if r["scenario"] == scenario and r["concurrency"] in cs
                and r.get("ratio_null") is not None]
        if not rows:
            out.append(_missing(name, f">= {STEP_RATIO:.2f}x"))
            continue
        worst = min(rows, key=lambda r: r["ratio_null"])
        all_r = ", ".join(f"c={r['concurrency']}: {r['ratio_null']:.2f}x" for r in rows)
        why = "" if len(rows) == len(cs) else f"only c={[r['concurrency'] for r in rows]} measured"
        out.append(_target(name, f">= {STEP_RATIO:.2f}x", f"worst {worst['ratio_null']:.2f}x ({all_r})",
                           worst["ratio_null"] >= STEP_RATIO and not why, _pct(worst["ratio_null"], STEP_RATIO), why))
    return out


def _fastest_group(res: dict, n: int) -> dict | None:
    """The groups-of-n row with the server's best rate (None: none measured)."""
    rows = [r for r in res.get("groups", []) if r["size"] == n]
    return max(rows, key=lambda r: r["server"]["session_steps_per_s"]) if rows else None


def _groups(res: dict) -> list[dict]:
    out = []
    for n, floor in GROUP_STEPS.items():
        name = f"group steps of {n}: >= {GROUP_RATIO} x null and >= {floor:,} session-steps/s"
        best = _fastest_group(res, n)
        if best is None:
            out.append(_missing(name, f">= {GROUP_RATIO}x, >= {floor:,}"))
            continue
        v, ratio = best["server"]["session_steps_per_s"], best.get("ratio_null") or 0.0
        ok = v >= floor and ratio >= GROUP_RATIO
        out.append(_target(name, f">= {GROUP_RATIO}x, >= {floor:,}",
                           f"{v:,.0f} (c={best['concurrency']}), {ratio:.2f}x null", ok,
                           f"{_pct(v, floor)} / {_pct(ratio, GROUP_RATIO)}"))
    return out


def _realistic(res: dict) -> list[dict]:
    """Compute-bound batches (>= 64): the better of frames and groups per batch and thread count, worst case."""
    name = f"realistic model: server >= {REALISTIC_RATIO} x onnxruntime in-process at the same batch (B >= 64)"
    real = res.get("realistic") or {}
    rows = [r for r in real.get("rows", []) if r.get("ratio_ort") is not None]
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r["threads"], r["batch"])
        if r["batch"] >= 64 and (key not in best or r["ratio_ort"] > best[key]["ratio_ort"]):
            best[key] = r
    if not best:
        return [_missing(name, f">= {REALISTIC_RATIO:.2f}x", real.get("error") or real.get("skipped") or "not measured")]
    worst = min(best.values(), key=lambda r: r["ratio_ort"])
    all_r = ", ".join(f"B={r['batch']} t={r['threads']} {r.get('rpc', '')}: {r['ratio_ort']:.2f}x" for r in best.values())
    unary = [f"t={r['threads']}: {r['ratio_ort']:.2f}x" for r in rows if r["batch"] == 1]
    why = f"batch 1 (unary Step) is transport-bound, not compute-bound: {', '.join(unary)}" if unary else ""
    return [_target(name, f">= {REALISTIC_RATIO:.2f}x", f"worst {worst['ratio_ort']:.2f}x ({all_r})",
                    worst["ratio_ort"] >= REALISTIC_RATIO, _pct(worst["ratio_ort"], REALISTIC_RATIO), why)]


def _memory(res: dict) -> list[dict]:
    name = f"{MEMORY_SESSIONS:,} idle demo sessions: RSS"
    mem = res.get("memory") or {}
    pts = [p for p in mem.get("points", []) if p["sessions"] == MEMORY_SESSIONS]
    if not pts:
        return [_missing(name, f"<= {MEMORY_BYTES / GB:g} GB", mem.get("skipped", "not measured"))]
    rss = pts[0]["rss_bytes"]
    return [_target(name, f"<= {MEMORY_BYTES / GB:g} GB",
                    f"{rss / GB:.2f} GB ({pts[0]['bytes_per_session']:,.0f} B/session)",
                    rss <= MEMORY_BYTES, _pct(MEMORY_BYTES, rss))]


def targets(res: dict) -> list[dict]:
    """Every target of issue 12, PASS/MISS with its margin."""
    return _steps(res) + _groups(res) + _realistic(res) + _memory(res)


# -- issue 18 ---------------------------------------------------------------------------------------------------

FRAME_RATIO = 0.8                          # 1. StepFrame of N >= 0.8x StepGroup of N
FRAME_SIZES = (256, 1024)
GROUP_NULL_RATIO = {256: 0.6}              # 2. groups of 256 >= 0.6x null ...
GROUP_RATE = {1024: 1_000_000}             # ... and of 1024 >= 1,000,000 session-steps/s
PER_MESSAGE = {"unary": (0.8, (1, 4)), "stream": (0.7, (1, 16))}  # 3. unary / streams vs null, at these c
TAIL_RATIO = 2.0                           # 6. p99 <= 2x p50 at half load


def _bounded(name: str, want: float, ratio: float, bound: float | None, measured: str) -> dict:
    """A ratio target with its bound (the floor's ratio in the same run): out of reach when the bound is below it."""
    why = ""
    if bound is not None:
        why = f"floor / null {bound:.2f}x" + (": out of reach for this design" if bound < want else "")
    return _target(name, f">= {want:.2f}x", measured, ratio >= want, _pct(ratio, want), why)


def _frames_vs_groups(res: dict) -> list[dict]:
    out = []
    for n in FRAME_SIZES:
        name = f"18.1 StepFrame of {n} >= {FRAME_RATIO} x StepGroup of {n}"
        frames = {r["concurrency"]: r for r in res.get("frames", []) if r["size"] == n}
        groups = {r["concurrency"]: r for r in res.get("groups", []) if r["size"] == n}
        both = sorted(set(frames) & set(groups))
        if not both:
            out.append(_missing(name, f">= {FRAME_RATIO:.2f}x"))
            continue
        c = 4 if 4 in both else both[-1]
        f, g = frames[c]["server"]["session_steps_per_s"], groups[c]["server"]["session_steps_per_s"]
        ff, fg = (frames[c].get("floor") or {}), (groups[c].get("floor") or {})
        bound = ff["session_steps_per_s"] / fg["session_steps_per_s"] if ff and fg else None
        why = "" if bound is None else f"the floor's frames / groups {bound:.2f}x" + (
            ": out of reach for this protocol" if bound < FRAME_RATIO else "")
        out.append(_target(name, f">= {FRAME_RATIO:.2f}x", f"{f:,.0f} vs {g:,.0f} (c={c}): {f / g:.2f}x",
                           f / g >= FRAME_RATIO, _pct(f / g, FRAME_RATIO), why))
    return out


def floor_ratio(row: dict, field: str) -> float | None:
    """The floor server's rate over the null server's in one row of a run (None: either is missing)."""
    floor, null = (row.get("floor") or {}).get(field), (row.get("null") or {}).get(field)
    return floor / null if floor and null else None


def _groups_near_wire(res: dict) -> list[dict]:
    out = []
    for n, want in GROUP_NULL_RATIO.items():
        name = f"18.2 StepGroup of {n} >= {want} x null"
        rows = [r for r in res.get("groups", []) if r["size"] == n and r.get("ratio_null") is not None]
        if not rows:
            out.append(_missing(name, f">= {want:.2f}x"))
            continue
        best = max(rows, key=lambda r: r["ratio_null"])
        out.append(_bounded(name, want, best["ratio_null"], floor_ratio(best, "session_steps_per_s"),
                            f"{best['ratio_null']:.2f}x (c={best['concurrency']})"))
    for n, want in GROUP_RATE.items():
        name = f"18.2 StepGroup of {n} >= {want:,} session-steps/s"
        best = _fastest_group(res, n)
        if best is None:
            out.append(_missing(name, f">= {want:,}"))
            continue
        v = best["server"]["session_steps_per_s"]
        out.append(_target(name, f">= {want:,}", f"{v:,.0f} (c={best['concurrency']})", v >= want, _pct(v, want)))
    return out


def _per_message(res: dict) -> list[dict]:
    out = []
    for key, (want, cs) in PER_MESSAGE.items():
        for c in cs:
            name = f"18.3 {'unary Step' if key == 'unary' else 'StreamSteps'} at c={c} >= {want} x null"
            row = next((r for r in res.get("transport", []) if r["scenario"] == key and r["concurrency"] == c
                        and r.get("ratio_null") is not None), None)
            if row is None:
                out.append(_missing(name, f">= {want:.2f}x"))
                continue
            out.append(_bounded(name, want, row["ratio_null"], floor_ratio(row, "msgs_per_s"),
                                f"{row['ratio_null']:.2f}x"))
    return out


def _tails(res: dict) -> list[dict]:
    out = []
    hl = res.get("half_load") or {}
    for what, part in (("unary Step", hl), ("StreamSteps", hl.get("stream") or {})):
        name = f"18.6 {what}: p99 <= {TAIL_RATIO:g} x p50 at half load"
        s = part.get("server")
        if not s or not s["p50_ms"]:
            out.append(_missing(name, f"<= {TAIL_RATIO:g}x"))
            continue
        tail = s["p99_ms"] / s["p50_ms"]
        tails = {who: part[who]["p99_ms"] / part[who]["p50_ms"] for who in ("null", "floor")
                 if part.get(who) and part[who]["p50_ms"]}
        why = ", ".join(f"{who} {t:.1f}x" for who, t in tails.items())
        if tails.get("null", 0) > TAIL_RATIO:
            why += ": out of reach on this machine (the null server's own tail is above it)"
        out.append(_target(name, f"<= {TAIL_RATIO:g}x", f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f} ms: {tail:.1f}x",
                           tail <= TAIL_RATIO, _pct(TAIL_RATIO, tail), why))
    return out


def targets_18(res: dict) -> list[dict]:
    """Issue 18's targets 1, 2, 3 and 6 (4 and 5 are bench.serial's and bench.redis_commit's)."""
    return _frames_vs_groups(res) + _groups_near_wire(res) + _per_message(res) + _tails(res)
