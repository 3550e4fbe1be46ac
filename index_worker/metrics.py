"""Prometheus series of the message index (the default registry, beside taskkit's): what the batches did to
Milvus, how long embedding and Milvus calls took, and Milvus failures by class.

Why the default registry: the worker's /metrics (prometheus_client.start_http_server) serves it whole, so the
index series and taskkit's `index` queue series come from one scrape; the API adds these to its own /metrics.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

EVENTS = Counter(
    "hotpath_index_events_total",
    "Index events by outcome: indexed, deleted, room_deleted, stale (dropped by the version guard), rejected "
    "(dead-lettered with a reason), busy (another writer held the message), lost (wrote after its lease expired).",
    ["outcome"],
)
EMBED_SECONDS = Histogram("hotpath_index_embed_seconds", "Time to embed one batch of texts.", ["embedder"],
                          buckets=_LATENCY_BUCKETS)
EMBED_TEXTS = Counter("hotpath_index_embedded_texts_total", "Texts embedded (precomputed vectors excluded).", ["embedder"])
MILVUS_SECONDS = Histogram("hotpath_index_milvus_seconds", "Time of one Milvus call, by operation.", ["op"],
                           buckets=_LATENCY_BUCKETS)
MILVUS_ERRORS = Counter("hotpath_index_milvus_errors_total", "Failed Milvus calls by class (transient, overloaded, "
                        "permanent) and operation.", ["kind", "op"])
MILVUS_REOPENS = Counter("hotpath_index_milvus_reopens_total", "Lone probes that reopened the collection after the "
                         "connection to Milvus was lost (store.py's reopen gate).")
BATCH_EVENTS = Histogram("hotpath_index_batch_events", "Events per batch applied by the indexer.",
                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000))

OUTCOMES = ("indexed", "deleted", "room_deleted", "stale", "rejected", "busy", "lost")
for _o in OUTCOMES:  # every series exists from the first scrape, at 0
    EVENTS.labels(_o)
