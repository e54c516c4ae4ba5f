"""Prometheus metrics, served on their own HTTP port; base units, no session ids in labels."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
_SECONDS_BUCKETS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


class _RequestCounts:
    """Collector for statestream_requests_total from the service's per-(method, code) counts."""

    def __init__(self, counts: dict):
        self.counts = counts

    def collect(self):
        family = CounterMetricFamily("statestream_requests", "RPCs answered, by method and status code",
                                     labels=["method", "code"])
        for (method, code), n in sorted(self.counts.items()):
            family.add_metric([method, code], n)
        yield family


class Metrics:
    """Every metric of one server process, in its own registry."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self._requests: dict[tuple[str, str], int] = {}
        r.register(_RequestCounts(self._requests))
        self.steps = Counter("statestream_steps_total", "Session-steps applied (one per session per batch)",
                             ["model"], registry=r)
        self.timesteps = Counter("statestream_timesteps_total", "Timesteps applied", ["model"], registry=r)
        self.batch_size = Histogram("statestream_batch_size", "Sessions per model run", ["model"],
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.queue_seconds = Histogram("statestream_queue_seconds", "Longest wait of a step for its batch, one observation per batch",
                                       ["model"], buckets=_SECONDS_BUCKETS, registry=r)
        self.compute_seconds = Histogram("statestream_compute_seconds", "Time of one model run", ["model"],
                                         buckets=_SECONDS_BUCKETS, registry=r)
        self.sessions = Gauge("statestream_active_sessions", "Open sessions", registry=r)
        self.evictions = Counter("statestream_evictions_total", "Sessions closed by idle expiry", registry=r)

    def count_request(self, method: str, code: str) -> None:
        # A plain dict on the hot path (a prometheus Counter costs a lock and a getpid per call: 10% of a
        # unary step in the profile); it is turned into statestream_requests_total when scraped.
        key = (method, code)
        self._requests[key] = self._requests.get(key, 0) + 1

    def observe_batch(self, model: str, size: int, timesteps: int, wait: float, compute: float) -> None:
        self.steps.labels(model).inc(size)
        self.timesteps.labels(model).inc(size * timesteps)
        self.batch_size.labels(model).observe(size)
        self.queue_seconds.labels(model).observe(wait)
        self.compute_seconds.labels(model).observe(compute)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the /metrics HTTP server; returns its port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server.server_address[1]
