"""Writes deploy/grafana/dashboards/vecnest.json, the vecnest Grafana dashboard.

    python deploy/grafana/dashboard.py

The JSON is committed; tests check it equals this script's output, that it validates, and
(with a real Prometheus) that every panel's PromQL returns series. Panels are declared as
(title, unit, [(legend, expr)]) so ids and the grid layout stay consistent.
"""

import json
from pathlib import Path

DATASOURCE = {"type": "prometheus", "uid": "vecnest-prometheus"}
C = 'collection=~"$collection"'
RATE = "$__rate_interval"
OUT = Path(__file__).resolve().parent / "dashboards" / "vecnest.json"


def quantile(q: float, metric: str, by: str, where: str = C) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{where}}}[{RATE}])))"


ROWS = [
    (
        "Recall (measured online by exact re-runs)",
        [
            (
                "Estimated recall, live searches (rolling mean)",
                "percentunit",
                "timeseries",
                [
                    ("{{collection}} {{index}} {{stage}}", f'vecnest_recall_estimate{{{C},source="live"}}'),
                ],
            ),
            (
                "Recall vs target (graph stage)",
                "percentunit",
                "timeseries",
                [
                    (
                        "{{collection}} {{index}} estimate",
                        f'vecnest_recall_estimate{{{C},source="live",stage="index"}}',
                    ),
                    ("{{collection}} target", f"vecnest_target_recall{{{C}}}"),
                ],
            ),
            (
                "Per-query recall p10 (1 in 10 queries is below)",
                "percentunit",
                "timeseries",
                [
                    (
                        "{{collection}} {{index}} {{stage}} {{source}}",
                        quantile(0.1, "vecnest_recall", "collection, index, stage, source"),
                    ),
                ],
            ),
            (
                "ef: default (tuned) and used",
                "none",
                "timeseries",
                [
                    ("{{collection}} {{index}} default ef", f"vecnest_ef_search{{{C}}}"),
                    ("{{collection}} {{index}} ef used", f'vecnest_recall_ef{{{C},source="live"}}'),
                    ("{{collection}} {{index}} candidates", f'vecnest_recall_candidates{{{C},source="live"}}'),
                ],
            ),
            (
                "Recall, latency and ef per index",
                "none",
                "table",
                [
                    ("recall", f'vecnest_recall_estimate{{{C},source="live",stage="final"}}'),
                    (
                        "p99 graph search (s)",
                        quantile(
                            0.99, "vecnest_stage_duration_seconds", "collection, index", f'{C},stage="index_search"'
                        ),
                    ),
                    ("ef", f"vecnest_ef_search{{{C}}}"),
                ],
            ),
            (
                "On-demand recall probes",
                "percentunit",
                "timeseries",
                [
                    ("{{collection}} {{index}} {{stage}}", f'vecnest_recall_estimate{{{C},source="probe"}}'),
                ],
            ),
            (
                "Recall measurements: evaluated / dropped / failed per second",
                "ops",
                "timeseries",
                [
                    (
                        "{{collection}} {{outcome}}",
                        f"sum by (collection, outcome) (rate(vecnest_recall_samples_total{{{C}}}[{RATE}]))",
                    ),
                    ("queue depth", "vecnest_recall_queue_depth"),
                ],
            ),
            (
                "Re-runs beside the encoder: p99 unit length and model-call wait for a unit",
                "s",
                "timeseries",
                [
                    (
                        "unit p99",
                        f"histogram_quantile(0.99, sum by (le) (rate(vecnest_background_unit_seconds_bucket[{RATE}])))",
                    ),
                    (
                        "model-call wait p99",
                        "histogram_quantile(0.99, sum by (le) "
                        f"(rate(vecnest_model_call_unit_wait_seconds_bucket[{RATE}])))",
                    ),
                ],
            ),
        ],
    ),
    (
        "Traffic and latency",
        [
            (
                "Queries per second",
                "reqps",
                "timeseries",
                [
                    (
                        "{{collection}} {{index}} {{strategy}}",
                        f"sum by (collection, index, strategy) (rate(vecnest_searches_total{{{C}}}[{RATE}]))",
                    ),
                ],
            ),
            (
                "Stage latency p50",
                "s",
                "timeseries",
                [
                    (
                        "{{collection}} {{index}} {{stage}}",
                        quantile(0.5, "vecnest_stage_duration_seconds", "collection, index, stage"),
                    ),
                ],
            ),
            (
                "Stage latency p95",
                "s",
                "timeseries",
                [
                    (
                        "{{collection}} {{index}} {{stage}}",
                        quantile(0.95, "vecnest_stage_duration_seconds", "collection, index, stage"),
                    ),
                ],
            ),
            (
                "Stage latency p99",
                "s",
                "timeseries",
                [
                    (
                        "{{collection}} {{index}} {{stage}}",
                        quantile(0.99, "vecnest_stage_duration_seconds", "collection, index, stage"),
                    ),
                ],
            ),
            (
                "HTTP requests per second by route and status",
                "reqps",
                "timeseries",
                [
                    (
                        "{{method}} {{route}} {{status}}",
                        f"sum by (method, route, status) (rate(vecnest_http_requests_total[{RATE}]))",
                    ),
                ],
            ),
            (
                "HTTP latency p99 by route",
                "s",
                "timeseries",
                [
                    (
                        "{{method}} {{route}}",
                        quantile(0.99, "vecnest_http_request_duration_seconds", "method, route", ""),
                    ),
                ],
            ),
        ],
    ),
    (
        "Encoder",
        [
            (
                "Texts encoded per second",
                "ops",
                "timeseries",
                [
                    ("{{model}}", f"sum by (model) (rate(vecnest_encoder_texts_total[{RATE}]))"),
                ],
            ),
            (
                "Batch size (texts per model call)",
                "none",
                "timeseries",
                [
                    (
                        "{{model}} mean",
                        f"sum by (model) (rate(vecnest_encoder_batch_texts_sum[{RATE}])) / "
                        f"sum by (model) (rate(vecnest_encoder_batch_texts_count[{RATE}]))",
                    ),
                    ("{{model}} p90", quantile(0.9, "vecnest_encoder_batch_texts", "model", "")),
                    (
                        "{{model}} requests merged, mean",
                        f"sum by (model) (rate(vecnest_encoder_batch_requests_sum[{RATE}])) / "
                        f"sum by (model) (rate(vecnest_encoder_batch_requests_count[{RATE}]))",
                    ),
                ],
            ),
            (
                "Encode queue",
                "none",
                "timeseries",
                [
                    ("waiting requests", "vecnest_encoder_queue_depth"),
                    (
                        "queue wait p99 (s)",
                        quantile(0.99, "vecnest_stage_duration_seconds", "stage", 'stage="queue_wait"'),
                    ),
                ],
            ),
        ],
    ),
    (
        "Indexes and storage",
        [
            (
                "Vectors per index",
                "short",
                "timeseries",
                [
                    ("{{collection}} {{index}} live", f"vecnest_index_vectors{{{C}}}"),
                    ("{{collection}} {{index}} deleted slots", f"vecnest_index_deleted_slots{{{C}}}"),
                ],
            ),
            (
                "Bytes",
                "bytes",
                "timeseries",
                [
                    ("{{collection}} {{index}} graph (approx.)", f"vecnest_index_bytes{{{C}}}"),
                    ("{{collection}} store", f"vecnest_store_bytes{{{C}}}"),
                    ("{{collection}} vector file", f"vecnest_vector_file_bytes{{{C}}}"),
                ],
            ),
            (
                "Documents and writes not yet snapshotted",
                "short",
                "timeseries",
                [
                    ("{{collection}} documents", f"vecnest_collection_documents{{{C}}}"),
                    ("{{collection}} unsnapshotted writes", f"vecnest_index_unsnapshotted_seqs{{{C}}}"),
                ],
            ),
        ],
    ),
    (
        "Errors and upgrades",
        [
            (
                "Errors per second by code",
                "ops",
                "timeseries",
                [
                    ("{{code}}", f"sum by (code) (rate(vecnest_errors_total[{RATE}]))"),
                ],
            ),
            (
                "Server errors (5xx) per second",
                "ops",
                "stat",
                [
                    ("5xx", f'sum(rate(vecnest_http_requests_total{{status=~"5.."}}[{RATE}])) or vector(0)'),
                ],
            ),
            (
                "Encoder upgrade: backfill progress",
                "percentunit",
                "timeseries",
                [
                    ("{{collection}} backfilled", f"vecnest_backfill_progress{{{C}}}"),
                    ("{{collection}} upgrade active", f"vecnest_upgrade_active{{{C}}}"),
                ],
            ),
            (
                "Ready",
                "none",
                "stat",
                [
                    ("ready", "vecnest_ready"),
                ],
            ),
        ],
    ),
]


def panel(pid: int, title: str, unit: str, kind: str, targets: list, x: int, y: int) -> dict:
    instant = kind == "table"
    out = {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull"]}}
        if kind == "timeseries"
        else {},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                "instant": instant,
                "range": not instant,
                **({"format": "table"} if instant else {}),
            }
            for i, (legend, expr) in enumerate(targets)
        ],
    }
    if instant:  # one row per (collection, index): the three queries joined on their labels
        out["transformations"] = [{"id": "merge", "options": {}}]
    return out


def dashboard() -> dict:
    panels, pid, y = [], 1, 0
    for row_title, row_panels in ROWS:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y = pid + 1, y + 1
        for i, (title, unit, kind, targets) in enumerate(row_panels):
            panels.append(panel(pid, title, unit, kind, targets, 12 * (i % 2), y + 8 * (i // 2)))
            pid += 1
        y += 8 * ((len(row_panels) + 1) // 2)
    return {
        "uid": "vecnest",
        "title": "vecnest: recall, latency, ef",
        "tags": ["vecnest"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "collection",
                    "label": "collection",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {
                        "query": "label_values(vecnest_collection_documents, collection)",
                        "refId": "collections",
                    },
                    "definition": "label_values(vecnest_collection_documents, collection)",
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".*",
                    "refresh": 2,
                    "sort": 1,
                    "current": {"text": "All", "value": "$__all"},
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {OUT}")
