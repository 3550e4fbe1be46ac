"""Prometheus series of the cache (on cacheman.observability.REGISTRY); origin latency and breaker state live
in cacheman/origin/breaker.py.

`entity` is one of room, members, user_rooms, reads; the counters answer "how often did we go to the
origin, and why" — the numbers the cache exists to keep small.
"""

from __future__ import annotations

from prometheus_client import Gauge

from cacheman.observability import REGISTRY
from cacheman.observability import LabelledCounter as Counter

HITS = Counter("hotpath_cache_hits_total", "Reads answered from Redis", ["entity"], registry=REGISTRY)
MISSES = Counter("hotpath_cache_misses_total", "Reads that had to load from the origin (lease holder)", ["entity"], registry=REGISTRY)
STALE = Counter("hotpath_cache_stale_total", "Expired entries served because the origin was down (X-Cache: stale)", ["entity"], registry=REGISTRY)
BYPASS = Counter("hotpath_cache_bypass_total", "Reads sent straight to the origin because Redis was down (X-Cache: bypass)", ["entity"], registry=REGISTRY)
FILLS = Counter(
    "hotpath_cache_fills_total",
    "Fill attempts by outcome: written, lease_lost (an invalidation won), older (older than an applied event), error",
    ["entity", "outcome"],
    registry=REGISTRY,
)
LEASE_WAITS = Counter("hotpath_cache_lease_waits_total", "Polls while another process held the fill lease", ["entity"], registry=REGISTRY)
LEASE_TIMEOUTS = Counter(
    "hotpath_cache_lease_wait_timeouts_total", "Waits that ran past HOTPATH_CACHE_LEASE_WAIT_S and went to the origin", ["entity"], registry=REGISTRY
)
INVALIDATIONS = Counter("hotpath_cache_invalidations_total", "Entries deleted or patched by change events", ["entity"], registry=REGISTRY)
EVENTS_APPLIED = Counter(
    "hotpath_cache_events_total", "Change events by type, result (applied | ignored) and source (http | stream)",
    ["type", "result", "source"], registry=REGISTRY,
)
REDIS_UP = Gauge("hotpath_cache_redis_up", "1 while the cache uses Redis, 0 while it bypasses it (or, on a Cluster, one of its nodes) after a failure", registry=REGISTRY,
                 multiprocess_mode="livemin")  # --workers N: 0 when any process bypasses
REDIS_NODES_DOWN = Gauge("hotpath_cache_redis_nodes_down", "Redis nodes the cache bypasses now after a failure (per-node health; 0 or 1 for a single node)", registry=REGISTRY,
                         multiprocess_mode="livemax")  # --workers N: the most any process bypasses
NEAR_HITS = Counter("hotpath_nearcache_hits_total", "Membership checks answered from the in-process near cache", registry=REGISTRY)
NEAR_FLUSHES = Counter("hotpath_nearcache_flushes_total", "Whole near-cache flushes (broadcast connection lost)", registry=REGISTRY)
STREAM_ACKED = Counter("hotpath_events_stream_acked_total", "Stream entries applied and acknowledged", ["how"], registry=REGISTRY)
STREAM_DEAD = Counter("hotpath_events_stream_dead_total", "Stream entries that can never apply (moved to <stream>:dead)", registry=REGISTRY)
REDIS_UP.set(1)
