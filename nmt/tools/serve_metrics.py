"""``GET /metrics`` of ``nmt serve``: Prometheus text format (``prometheus-client``, in the
``serve`` extra). Each application has its own registry, so several servers in one process (the
tests) do not share counts.

- ``nmt_serve_requests_total{status}``: translate requests by the HTTP status of their answer;
- ``nmt_serve_request_seconds``: time from a translate request's arrival to its answer;
- ``nmt_serve_batch_sentences``: sentences per model call;
- ``nmt_serve_queue_requests`` / ``nmt_serve_queue_sentences``: requests and sentences waiting;
- ``nmt_serve_workers`` / ``nmt_serve_worker_restarts``: model worker processes running, and
  started again after one died (0 with ``--workers 0``).
"""
from __future__ import annotations

from typing import Any, Callable

__all__ = ["ServeMetrics", "metrics_or_none"]

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    """The server's counters, histograms and gauges (``waiting()``, ``waiting_texts()`` and the
    ``stats`` counts of the worker pool are read when the metrics are scraped)."""

    def __init__(self, waiting: Callable[[], int], waiting_texts: Callable[[], int],
                 stats: dict[str, int] | None = None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("nmt_serve_requests", "translate requests by the HTTP status of their answer",
                                ["status"], registry=self.registry)
        self.latency = Histogram("nmt_serve_request_seconds", "time from a translate request's arrival to its "
                                 "answer", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_sentences = Histogram("nmt_serve_batch_sentences", "sentences per model call",
                                         buckets=BATCH_BUCKETS, registry=self.registry)
        Gauge("nmt_serve_queue_requests", "requests waiting for the model",
              registry=self.registry).set_function(waiting)
        Gauge("nmt_serve_queue_sentences", "sentences waiting for the model",
              registry=self.registry).set_function(waiting_texts)
        self._by_status: dict[int, Any] = {}
        counts = stats if stats is not None else {}
        Gauge("nmt_serve_workers", "model worker processes running",
              registry=self.registry).set_function(lambda: counts.get("workers", 0))
        Gauge("nmt_serve_worker_restarts", "model worker processes started again after one died",
              registry=self.registry).set_function(lambda: counts.get("worker_restarts", 0))

    def request(self, status: int, seconds: float) -> None:
        counter = self._by_status.get(status)
        if counter is None:  # labels() looks the child up by its label values: once per status
            counter = self._by_status[status] = self.requests.labels(status=str(status))
        counter.inc()
        self.latency.observe(seconds)

    def batch(self, sentences: int) -> None:
        self.batch_sentences.observe(sentences)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def metrics_or_none(waiting: Callable[[], int], waiting_texts: Callable[[], int],
                    stats: dict[str, int] | None = None) -> ServeMetrics | None:
    """The metrics, or None without ``prometheus-client`` (``/metrics`` then says how to install it)."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return None
    return ServeMetrics(waiting, waiting_texts, stats)
