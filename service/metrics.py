"""Every Prometheus metric vecnest exports, on one registry per app (no global state).

Labels stay low-cardinality: route templates, methods, status codes, collection names, index
names (a dim such as "384", or "fde"), stages, recall sources and model names; never document
ids or text. `index=""` marks what belongs to no single graph (encoding, the store, writes that
reach every graph).
"""

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# 50 µs to 10 s: fine enough for sub-millisecond stages (a rerank, a small graph search).
LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Per-query recall@k takes values i/k; these edges resolve the range that matters (0.8 to 1).
RECALL_BUCKETS = (0.1, 0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.925, 0.95, 0.97, 0.98, 0.99, 0.995, 1.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vecnest_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "vecnest_http_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "vecnest_stage_duration_seconds",
            "Latency of one stage of a request, by collection and index: encode, queue_wait, filter, fde, "
            "index_search, exact_search, rerank, maxsim, hydrate, store, index_add, index_delete.",
            ["collection", "index", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.background_unit_seconds = Histogram(
            "vecnest_background_unit_seconds",
            "Length of one unit of paced background work (a chunk of a recall re-run's exact scan, a "
            "slice of its graph searches): the longest a model call may wait for one.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_call_unit_wait_seconds = Histogram(
            "vecnest_model_call_unit_wait_seconds",
            "How long a model call that met a running background unit waited for it to end.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("vecnest_errors", "Error responses by error code.", ["code"], registry=r)
        self.encode_batch_texts = Histogram(
            "vecnest_encoder_batch_texts",
            "Texts per model call (after micro-batching).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.search_batch_requests = Histogram(
            "vecnest_search_batch_requests",
            "Search requests merged into one backend call (concurrent searches batched).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.encode_batch_requests = Histogram(
            "vecnest_encoder_batch_requests",
            "Requests merged into one model call.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.encoded_texts = Counter("vecnest_encoder_texts", "Texts encoded.", ["model"], registry=r)
        self.encode_queue_depth = Gauge("vecnest_encoder_queue_depth", "Encode requests waiting.", registry=r)
        self.searches = Counter(
            "vecnest_searches",
            "Queries answered, by collection, index and strategy (hnsw or exact).",
            ["collection", "index", "strategy"],
            registry=r,
        )
        self.backfilled = Counter(
            "vecnest_backfill_documents", "Documents re-embedded by encoder-upgrade syncs.", ["collection"], registry=r
        )
        self.upgrade_queries = Counter(
            "vecnest_upgrade_queries",
            "Text searches during an upgrade, by how they were served: mapped (new model through the map, "
            "merged with backfilled documents), blended (a blend of it with the previous model's query) or "
            "previous_model (the gate did not pass).",
            ["collection", "mode"],
            registry=r,
        )
        self.ready = Gauge("vecnest_ready", "1 once collections are loaded and replayed.", registry=r)
        # -- recall estimation ----------------------------------------------------------------
        self.recall = Histogram(
            "vecnest_recall",
            "Per-query recall measured by re-running a search exactly. stage=index: the graph's candidates vs "
            "exact search in the graph's space; stage=final: the results returned vs the exact answer. "
            "source=live: sampled searches; source=probe: on-demand measurements.",
            ["collection", "index", "stage", "source"],
            buckets=RECALL_BUCKETS,
            registry=r,
        )
        self.recall_estimate = Gauge(
            "vecnest_recall_estimate",
            "Mean per-query recall over the most recent measured queries.",
            ["collection", "index", "stage", "source"],
            registry=r,
        )
        self.recall_ef = Gauge(
            "vecnest_recall_ef",
            "Mean graph breadth (ef) of the most recent measured queries.",
            ["collection", "index", "source"],
            registry=r,
        )
        self.recall_candidates = Gauge(
            "vecnest_recall_candidates",
            "Mean candidates (graph results re-ranked) of the most recent measured queries.",
            ["collection", "index", "source"],
            registry=r,
        )
        self.recall_samples = Counter(
            "vecnest_recall_samples",
            "Sampled searches by outcome: evaluated, dropped (estimator busy: never queued), failed.",
            ["collection", "outcome"],
            registry=r,
        )
        self.recall_queue_depth = Gauge(
            "vecnest_recall_queue_depth", "Sampled searches waiting for their exact re-run.", registry=r
        )
        self.recall_duty_cycle = Gauge(
            "vecnest_recall_duty_cycle",
            "Share of one core's CPU time the exact re-runs took at most after their last pass: the max_busy "
            "setting, or its settled share while every recall controller they fed held its setting.",
            registry=r,
        )

    def forget_collection(self, name: str) -> None:
        """Remove every series labelled with collection `name` (it was dropped): without this,
        each dropped collection would leave its series behind for the life of the process."""
        for metric in (
            self.stage_seconds,
            self.searches,
            self.backfilled,
            self.upgrade_queries,
            self.recall,
            self.recall_estimate,
            self.recall_ef,
            self.recall_candidates,
            self.recall_samples,
        ):
            metric.remove_by_labels({"collection": name})

    def observe_stages(self, collection: str, index: str, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self.stage_seconds.labels(collection, index, stage).observe(seconds)

    def watch_collections(self, stats: Callable[[], Iterable[tuple[str, dict]]]) -> None:
        """Export per-collection and per-index sizes and settings, read from `stats()` at scrape time."""
        self.registry.register(_CollectionCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CollectionCollector(Collector):
    """Scrape-time gauges from `Collection.stats()` (plus the `recall` policy block). A gauge
    a backend's stats do not hold (a shared engine keeps no store files or graph slots here) is
    left out for that collection."""

    def __init__(self, stats: Callable[[], Iterable[tuple[str, dict]]]):
        self._stats = stats

    def collect(self):
        def family(name, doc, *labels):
            return GaugeMetricFamily(name, doc, labels=["collection", *labels])

        documents = family("vecnest_collection_documents", "Live documents per collection.")
        pending = family("vecnest_index_unsnapshotted_seqs", "Writes not yet in an index snapshot.")
        store_bytes = family("vecnest_store_bytes", "SQLite store size on disk (database + WAL).")
        vector_bytes = family("vecnest_vector_file_bytes", "Full-dim vector file size on disk.")
        vectors = family("vecnest_index_vectors", "Live vectors per graph.", "index")
        slots = family("vecnest_index_slots", "Graph slots (live + deleted) per graph.", "index")
        deleted = family("vecnest_index_deleted_slots", "Deleted slots awaiting a rebuild, per graph.", "index")
        graph_bytes = family("vecnest_index_bytes", "Approximate graph memory (vectors + links) per graph.", "index")
        ef = family(
            "vecnest_ef_search", "Default ef per graph: the recall controller's, else the collection's.", "index"
        )
        rerank = family(
            "vecnest_rerank_factor",
            "Funnel shortlist per result of a low-dim graph: the recall controller's, else the collection's.",
            "index",
        )
        target = family("vecnest_target_recall", "The recall target the ef controller holds (collections with one).")
        upgrading = family("vecnest_upgrade_active", "1 while an encoder upgrade (map + backfill) is in progress.")
        backfill = family(
            "vecnest_backfill_progress",
            "Share of documents the upgrade's sync has re-embedded (1: none pending or no upgrade).",
        )
        for name, s in self._stats():
            documents.add_metric([name], s["documents"])
            if "applied_seq" in s:  # the embedded store's files and graphs; a shared engine keeps its own
                pending.add_metric([name], s["applied_seq"] - s["snapshot_seq"])
                store_bytes.add_metric([name], s["store_bytes"])
                vector_bytes.add_metric([name], s["vector_file_bytes"])
            for index, i in s["indexes"].items():
                if "slots" in i:
                    vectors.add_metric([name, index], i["slots"] - i["deleted"])
                    slots.add_metric([name, index], i["slots"])
                    deleted.add_metric([name, index], i["deleted"])
                    graph_bytes.add_metric([name, index], i["bytes"])
                ef.add_metric([name, index], i["ef_search"])
            for index, factor in s["rerank_factors"].items():
                rerank.add_metric([name, index], factor)
            if s["target_recall"] is not None:
                target.add_metric([name], s["target_recall"])
            upgrading.add_metric([name], s["upgrade_active"])
            backfill.add_metric([name], s["backfill_progress"])
        yield from (
            documents,
            pending,
            store_bytes,
            vector_bytes,
            vectors,
            slots,
            deleted,
            graph_bytes,
            ef,
            rerank,
            target,
            upgrading,
            backfill,
        )

    def describe(self):
        return []
