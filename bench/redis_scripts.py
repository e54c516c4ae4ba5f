"""`python -m bench.redis_scripts`: what redis-server itself spends per session written, by the way it is written.

    python -m bench.redis_scripts                 # ~1 minute; writes bench/results/redis_scripts.{md,json}
    python -m bench.redis_scripts --no-aof

Frames on Redis are bounded by redis-server's own CPU per session (bench.redis_commit): this measures that CPU
for the store's compare-and-set script and for the writes it could be replaced by, on the same 256 keys of a
600-byte value (the size of a demo session's record), against a real redis-server on loopback: its main
thread's time on a CPU (/proc/PID/schedstat) per key written, median of `--rounds` interleaved rounds of
`--commits` batches each.

- `store CAS script`: the store's CAS_SCRIPT (HGET v, HSET v w d, PEXPIRE), one EVALSHA of 256 keys;
- `CAS without PEXPIRE`: the same script without the TTL refresh (a lazily refreshed TTL would cost about this);
- `CAS, TTL refreshed when PTTL says so`: the TTL read each write, refreshed only when it runs short;
- `CAS, TTL refreshed when a field says so`: the key's expiry kept in a field read with the version, the deadline
  written beside the record, the TTL refreshed only when a deadline passes the expiry;
- `SET per key in a script`: one EVALSHA of 256 keys doing nothing but SET k v PX ttl: the floor of any
  per-key script (no compare at all);
- `SET PX, pipelined`: 256 SET commands in one round trip (no script, no compare);
- `MSET`: one command for all 256 (no compare, no TTL).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from statestream.server.store.redis import CAS_SCRIPT
from tests.support.redis_process import RedisProcess

from .cli import publish
from .procs import ROOT
from .redis_commit import on_cpu_ns

KEYS, VALUE = 256, 600
_PEXPIRE = "    redis.call('PEXPIRE', k, ttl)\n"
_READ = "local v = redis.call('HGET', k, 'v')"
_WRITE = "redis.call('HSET', k, 'v', new, 'w', token, 'd', data)"


def _variant(*swaps: tuple[str, str]) -> str:
    """The store's CAS_SCRIPT with each (old, new) piece of it swapped."""
    text = CAS_SCRIPT
    for old, new in swaps:
        if old not in text:
            raise RuntimeError(f"CAS_SCRIPT no longer has {old!r}: update bench.redis_scripts")
        text = text.replace(old, new)
    return text


NO_PEXPIRE = _variant((_PEXPIRE, ""))
LAZY_TTL = _variant((_PEXPIRE, "    if redis.call('PTTL', k) < tonumber(ttl) / 2 then redis.call('PEXPIRE', k, ttl) end\n"))
# the key's expiry kept in a field `x` read with the version, the deadline written beside the record (`e`): the TTL
# refreshed only when a write's deadline passes `x` (here never: every key starts with `x` far ahead)
FIELD_TTL = _variant((_READ, "local r = redis.call('HMGET', k, 'v', 'x')\n  local v = r[1]"),
                     (_WRITE, "redis.call('HSET', k, 'v', new, 'w', token, 'd', data, 'e', ttl)"),
                     (_PEXPIRE, "    if (tonumber(r[2]) or 0) < tonumber(ttl) then redis.call('HSET', k, 'x', 2 * ttl)\n"
                                "      redis.call('PEXPIRE', k, ttl) end\n"))
SET_ONLY = """
for i, k in ipairs(KEYS) do redis.call('SET', k, ARGV[4 * i + 1], 'PX', ARGV[4 * i]) end
return 0
"""
SCRIPTS = {"store CAS script": CAS_SCRIPT, "CAS without PEXPIRE": NO_PEXPIRE,
           "CAS, TTL refreshed when PTTL says so": LAZY_TTL, "CAS, TTL refreshed when a field says so": FIELD_TTL,
           "SET per key in a script": SET_ONLY}
PLAIN = ("SET PX, pipelined", "MSET")


def log(msg: str) -> None:
    print(f"[redis_scripts {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def measure(rounds: int, commits: int, aof: bool) -> dict[str, list[float]]:
    """redis-server CPU us per key written, per way of writing, per round."""
    value = np.random.default_rng(0).bytes(VALUE)
    keys = [b"statestream:s:\x00dev-%d" % i for i in range(KEYS)]
    out: dict[str, list[float]] = {name: [] for name in (*SCRIPTS, *PLAIN)}
    with RedisProcess(appendonly=aof) as rp, rp.client() as c:
        shas = {name: c.script_load(text) for name, text in SCRIPTS.items()}
        for _ in range(rounds):
            for name in out:
                c.flushall()
                hashed = name in SCRIPTS and name != "SET per key in a script"   # the store's records are hashes
                for k in keys:
                    if hashed:
                        c.hset(k, mapping={"v": b"0", "w": b"t", "d": value, "x": 2**62})
                    else:
                        c.set(k, value)
                    c.pexpire(k, 3_600_000)
                t0 = on_cpu_ns(rp.proc.pid)
                for v in range(1, commits + 1):
                    if name in SCRIPTS:
                        args = [b"token:%d" % v]
                        for _k in keys:
                            args += [b"%d" % v, b"%d" % (v - 1), b"3600000", value]
                        codes = c.evalsha(shas[name], KEYS, *keys, *args)
                        assert name == "SET per key in a script" or codes == [0] * KEYS, codes[:3]
                    elif name == "MSET":
                        c.mset(dict.fromkeys(keys, value))
                    else:
                        pipe = c.pipeline(transaction=False)
                        for k in keys:
                            pipe.set(k, value, px=3_600_000)
                        pipe.execute()
                out[name].append((on_cpu_ns(rp.proc.pid) - t0) / 1e3 / (commits * KEYS))
            log(" ".join(f"{name}: {v[-1]:.2f}" for name, v in out.items()))
    return out


def report(res: dict) -> str:
    m = res["meta"]
    lines = [f"# redis-server's CPU per session written, by the way it is written: {m['date']}", "",
             f"{m['cpus']} CPUs; redis-server {'with AOF everysec' if m['aof'] else 'without AOF'} on loopback; "
             f"{KEYS} keys of a {VALUE}-byte value per batch, {m['commits']} batches per round, {m['rounds']} "
             f"interleaved rounds; `{m['command']}`.", "",
             "| way of writing | redis-server CPU us per key (median) | rounds | x the store's script |",
             "| --- | --- | --- | --- |"]
    base = statistics.median(res["us"]["store CAS script"])
    for name, runs in res["us"].items():
        med = statistics.median(runs)
        lines.append(f"| {name} | {med:.2f} | {', '.join(f'{v:.2f}' for v in runs)} | {med / base:.2f}x |")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.redis_scripts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--commits", type=int, default=100, help="batches of 256 per way of writing per round")
    p.add_argument("--no-aof", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = p.parse_args(argv)
    res = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                    "aof": not a.no_aof, "rounds": a.rounds, "commits": a.commits,
                    "command": "python -m bench.redis_scripts " + " ".join(argv if argv is not None else sys.argv[1:])},
           "us": measure(a.rounds, a.commits, not a.no_aof)}
    a.out.mkdir(parents=True, exist_ok=True)
    return publish(a.out, "redis_scripts", res, report(res))


if __name__ == "__main__":
    sys.exit(main())
