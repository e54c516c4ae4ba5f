"""The targets of issue 12 (throughput per core), PASS/MISS with margins, from the figures of one bench run."""

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


def _groups(res: dict) -> list[dict]:
    out = []
    for n, floor in GROUP_STEPS.items():
        name = f"group steps of {n}: >= {GROUP_RATIO} x null and >= {floor:,} session-steps/s"
        rows = [r for r in res.get("groups", []) if r["size"] == n]
        if not rows:
            out.append(_missing(name, f">= {GROUP_RATIO}x, >= {floor:,}"))
            continue
        best = max(rows, key=lambda r: r["server"]["session_steps_per_s"])
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
