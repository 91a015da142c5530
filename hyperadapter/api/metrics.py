"""Prometheus metrics of one server (its own registry, so tests can run several apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("hyperadapter_requests_total", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram("hyperadapter_request_seconds", "HTTP request latency", ["route"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.tokens = Counter("hyperadapter_generated_tokens_total", "tokens generated", registry=r)
        self.prompt_tokens = Counter("hyperadapter_prompt_tokens_total", "prompt tokens processed", registry=r)
        self.cache = Counter("hyperadapter_adapter_cache_total", "adapter requests by outcome",
                             ["outcome"], registry=r)  # exact | near | blend | generated
        self.generated = Counter("hyperadapter_adapters_generated_total", "adapters made by the generator",
                                 registry=r)
        self.generate_seconds = Histogram("hyperadapter_adapter_generate_seconds", "time to make an adapter",
                                          registry=r, buckets=(0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.routed = Counter("hyperadapter_routed_replies_total", "replies answered by a document's sentence "
                              "adapter (the one nearest the question)", registry=r)
        self.queue_depth = Gauge("hyperadapter_queue_depth", "generation requests waiting", registry=r)
        self.batch_size = Gauge("hyperadapter_batch_rows", "rows in the running decode batch", registry=r)
