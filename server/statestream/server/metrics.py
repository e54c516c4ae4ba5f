"""Prometheus metrics, served on their own HTTP port; base units, no session ids in labels."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
_SECONDS_BUCKETS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


class Metrics:
    """Every metric of one server process, in its own registry."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("statestream_requests_total", "RPCs answered, by method and status code",
                                ["method", "code"], registry=r)
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
        self._req_children: dict = {}

    def count_request(self, method: str, code: str) -> None:
        child = self._req_children.get((method, code))
        if child is None:
            child = self._req_children[(method, code)] = self.requests.labels(method, code)
        child.inc()

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
