"""Every Prometheus metric vecnest exports, on one registry per app (no global state).

Labels stay low-cardinality: route templates, methods, status codes, collection names,
stages and model names; never document ids or text.
"""

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# 50 µs to 10 s: fine enough for sub-millisecond stages (a rerank, a small graph search).
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vecnest_http_requests", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=r)
        self.request_seconds = Histogram(
            "vecnest_http_request_duration_seconds", "HTTP request latency by route template and method.",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram(
            "vecnest_stage_duration_seconds",
            "Latency of one stage of a request: encode, queue_wait, filter, index_search, exact_search, rerank, "
            "store, index_add, index_delete.",
            ["collection", "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("vecnest_errors", "Error responses by error code.", ["code"], registry=r)
        self.encode_batch_texts = Histogram(
            "vecnest_encoder_batch_texts", "Texts per model call (after micro-batching).", ["model"],
            buckets=BATCH_BUCKETS, registry=r)
        self.encode_batch_requests = Histogram(
            "vecnest_encoder_batch_requests", "Requests merged into one model call.", ["model"],
            buckets=BATCH_BUCKETS, registry=r)
        self.encoded_texts = Counter("vecnest_encoder_texts", "Texts encoded.", ["model"], registry=r)
        self.encode_queue_depth = Gauge("vecnest_encoder_queue_depth", "Encode requests waiting.", registry=r)
        self.searches = Counter(
            "vecnest_searches", "Queries answered, by collection and strategy (hnsw or exact).",
            ["collection", "strategy"], registry=r)
        self.ready = Gauge("vecnest_ready", "1 once collections are loaded and replayed.", registry=r)

    def observe_stages(self, collection: str, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self.stage_seconds.labels(collection, stage).observe(seconds)

    def watch_collections(self, stats: Callable[[], Iterable[tuple[str, dict]]]) -> None:
        """Export per-collection sizes, read from `stats()` at scrape time."""
        self.registry.register(_CollectionCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CollectionCollector(Collector):
    def __init__(self, stats: Callable[[], Iterable[tuple[str, dict]]]):
        self._stats = stats

    def collect(self):
        documents = GaugeMetricFamily("vecnest_collection_documents", "Live documents per collection.", labels=["collection"])
        slots = GaugeMetricFamily("vecnest_index_slots", "Graph slots (live + deleted) per collection index.", labels=["collection"])
        deleted = GaugeMetricFamily("vecnest_index_deleted_slots", "Deleted slots awaiting a rebuild.", labels=["collection"])
        pending = GaugeMetricFamily("vecnest_index_unsnapshotted_seqs", "Writes not yet in an index snapshot.", labels=["collection"])
        for name, s in self._stats():
            documents.add_metric([name], s["documents"])
            slots.add_metric([name], s["index_slots"])
            deleted.add_metric([name], s["deleted_slots"])
            pending.add_metric([name], s["applied_seq"] - s["snapshot_seq"])
        yield from (documents, slots, deleted, pending)

    def describe(self):
        return []
