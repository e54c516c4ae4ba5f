"""Prometheus metrics, served on their own HTTP port; base units, no session ids in labels.

The hot path only bumps plain Python numbers (a prometheus_client Counter or Histogram costs a lock and
a getpid per call: 10% of a unary step in the profile); a collector turns them into metric families
when /metrics is scraped.
"""

from __future__ import annotations

import time

import numpy as np
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
_SECONDS_BUCKETS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


FOLD_EVERY = 4096  # model runs whose histogram samples wait for one numpy pass (or for a scrape) at most


class _Histogram:
    """Bucket counts ("le": a value equal to a bound counts in that bucket) and a sum, filled in bulk (`add`)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple):
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        self.total = 0.0

    def add(self, values: np.ndarray) -> None:
        self.counts += np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.counts))
        self.total += float(values.sum())

    def buckets(self) -> list[tuple[str, int]]:
        names = [*map(str, self.bounds.tolist()), "+Inf"]
        return list(zip(names, np.cumsum(self.counts).tolist()))


class ModelStats:
    """What one model version did: steps, model runs, and the steps that succeeded or failed with their time from
    queued to answered (KServe ModelStatistics reads it; Prometheus too)."""

    __slots__ = ("steps", "timesteps", "batch_size", "queue_seconds", "compute_seconds", "executions", "success",
                 "success_seconds", "failure", "failure_seconds", "last_inference", "runs")

    def __init__(self):
        self.steps = 0
        self.timesteps = 0
        self.batch_size = _Histogram(_BATCH_BUCKETS)
        self.queue_seconds = _Histogram(_SECONDS_BUCKETS)
        self.compute_seconds = _Histogram(_SECONDS_BUCKETS)
        self.executions = 0
        self.success = self.failure = 0
        self.success_seconds = self.failure_seconds = 0.0
        self.last_inference = 0.0  # time.time() of the last model run
        self.runs: list[tuple[int, float, float]] = []  # (sessions, queue s, compute s) of runs not yet in histograms

    def ran(self, size: int, timesteps: int, wait: float, compute: float) -> None:
        """A model run of `size` sessions, the first of which waited `wait` seconds in the queue."""
        self.executions += 1
        self.last_inference = time.time()
        self.steps += size
        self.timesteps += size * timesteps
        self.runs.append((size, wait, compute))
        if len(self.runs) >= FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        """Put the runs observed since the last fold into the histograms (one numpy pass: a run appends a tuple)."""
        if self.runs:
            size, wait, compute = np.asarray(self.runs, dtype=np.float64).T
            self.runs = []
            self.batch_size.add(size)
            self.queue_seconds.add(wait)
            self.compute_seconds.add(compute)


class Metrics:
    """Every metric of one server process, in its own registry."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests: dict[tuple, int] = {}  # (method, grpc.StatusCode): named when scraped
        self.models: dict[tuple[str, int], ModelStats] = {}  # per model version (name, version)
        self._table = None
        self.registry.register(self)

    def watch(self, table) -> None:
        """Read open sessions and evictions from this SessionTable when scraped."""
        self._table = table

    def count_request(self, method: str, code) -> None:
        """One RPC answered with `code` (a grpc.StatusCode)."""
        key = (method, code)
        self.requests[key] = self.requests.get(key, 0) + 1

    def stats(self, key: tuple[str, int]) -> ModelStats:
        m = self.models.get(key)
        if m is None:
            m = self.models[key] = ModelStats()
        return m

    def observe_batch(self, key: tuple[str, int], units, size: int, timesteps: int, started: float, now: float,
                      ran: bool = True) -> None:
        """A run of `size` sessions (its model run started at `started`, time.perf_counter(); `ran`: it got that
        far), and the outcomes of its units' entries: applied ones succeeded, the others failed; each took from its
        unit's enqueueing until `now`."""
        m = self.models.get(key) or self.stats(key)
        if ran:
            m.ran(size, timesteps, started - (units[0].enqueued if len(units) == 1 else min(u.enqueued for u in units)),
                  now - started)
        ok = bad = 0  # entries, and their seconds from queued to answered, summed here and added once
        ok_s = bad_s = 0.0
        for u in units:
            n, took = len(u.sessions), now - u.enqueued
            if u.errors:
                k = len(u.errors)
                bad += k
                bad_s += k * took
                n -= k
            ok += n
            ok_s += n * took
        m.success += ok
        m.success_seconds += ok_s
        if bad:
            m.failure += bad
            m.failure_seconds += bad_s

    def observe_step(self, key: tuple[str, int], timesteps: int, started: float, now: float, *, ran: bool = True,
                     ok: bool = True) -> None:
        """A lone step run at once in its caller, never queued (Batcher.step), started at `started`: a model run of
        one session (`ran`: it got that far) and one entry that succeeded or (`ok` False) failed."""
        m = self.models.get(key) or self.stats(key)
        took = now - started
        if ran:
            m.ran(1, timesteps, 0.0, took)
        if ok:
            m.success += 1
            m.success_seconds += took
        else:
            m.failure += 1
            m.failure_seconds += took

    def collect(self):
        """The metric families, for prometheus_client's registry (called when /metrics is scraped)."""
        req = CounterMetricFamily("statestream_requests", "RPCs answered, by method and status code",
                                  labels=["method", "code"])
        for method, name, n in sorted((method, code.name, n) for (method, code), n in self.requests.items()):
            req.add_metric([method, name], n)
        yield req
        labels = ["model", "version"]
        steps = CounterMetricFamily("statestream_steps", "Session-steps applied (one per session per batch)",
                                    labels=labels)
        timesteps = CounterMetricFamily("statestream_timesteps", "Timesteps applied", labels=labels)
        runs = CounterMetricFamily("statestream_model_runs", "Model runs (executions)", labels=labels)
        outcomes = CounterMetricFamily("statestream_step_outcomes", "Steps that reached a model run, by outcome",
                                       labels=[*labels, "outcome"])
        seconds = CounterMetricFamily("statestream_step_outcome_seconds", "Time from queued to answered of those "
                                      "steps, summed, by outcome", labels=[*labels, "outcome"])
        hists = {
            "batch_size": HistogramMetricFamily("statestream_batch_size", "Sessions per model run", labels=labels),
            "queue_seconds": HistogramMetricFamily(
                "statestream_queue_seconds", "Longest wait of a step for its batch, one observation per batch",
                labels=labels),
            "compute_seconds": HistogramMetricFamily("statestream_compute_seconds", "Time of one model run",
                                                     labels=labels),
        }
        for (name, version), m in sorted(self.models.items()):
            m.fold()
            lv = [name, str(version)]
            steps.add_metric(lv, m.steps)
            timesteps.add_metric(lv, m.timesteps)
            runs.add_metric(lv, m.executions)
            outcomes.add_metric([*lv, "success"], m.success)
            outcomes.add_metric([*lv, "failure"], m.failure)
            seconds.add_metric([*lv, "success"], m.success_seconds)
            seconds.add_metric([*lv, "failure"], m.failure_seconds)
            for key, family in hists.items():
                h = getattr(m, key)
                family.add_metric(lv, h.buckets(), h.total)
        yield from (steps, timesteps, runs, outcomes, seconds)
        yield from hists.values()
        table = self._table
        yield GaugeMetricFamily("statestream_active_sessions", "Open sessions",
                                value=0 if table is None else len(table))
        yield CounterMetricFamily("statestream_evictions", "Sessions closed by idle expiry",
                                  value=0 if table is None else table.evictions)
        lookups = CounterMetricFamily("statestream_frame_index_lookups", "Frames of several sessions looked up in "
                                      "the frame index (--frame-index), by result", labels=["result"])
        lookups.add_metric(["hit"], 0 if table is None else table.frames.hits)
        lookups.add_metric(["miss"], 0 if table is None else table.frames.misses)
        yield lookups
        yield GaugeMetricFamily("statestream_frame_index_sessions", "Session references the frame index holds",
                                value=0 if table is None else table.frames.held)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the /metrics HTTP server; returns its port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server.server_address[1]
