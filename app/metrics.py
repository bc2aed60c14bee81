"""Prometheus metrics, in a registry of the app's own (two apps in one process never clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dupq_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dupq_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "dupq_encoder_batch_size",
            "questions per encoder call (dynamic batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "dupq_encoder_queue_depth", "questions waiting for the encoder", registry=self.registry
        )
        self.index_size = Gauge("dupq_index_size", "questions in the duplicate index", registry=self.registry)
        self.feed_lag = Gauge(
            "dupq_feed_lag_seconds",
            "replicas on PostgreSQL: seconds since this replica was last level with the store's change feed",
            registry=self.registry,
        )
        self.feed_position = Gauge(
            "dupq_feed_position",
            "replicas on PostgreSQL: the last change of the store's feed this replica applied",
            registry=self.registry,
        )
        self.index_namespaces = Gauge(
            "dupq_index_namespaces",
            "namespaces by how they are searched: flat (exact) or hnsw (approximate)",
            ["structure"],
            registry=self.registry,
        )
