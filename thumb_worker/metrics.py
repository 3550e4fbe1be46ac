"""Prometheus metrics of the thumbnail worker (the default registry, scraped with taskkit's queue metrics).

Rejections are counted by a short reason label (`too_many_pixels`, `blocked_format`, ...; guards.Rejected.label),
so a dashboard shows what kind of hostile or broken input arrives without reading the dead-letter queue.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger("thumb_worker")
_served: set[tuple[str, int]] = set()

MADE = Counter("hotpath_thumbnails_made_total", "Thumbnails written, by size.", ["size"])
SOURCES = Counter("hotpath_thumbnail_sources_total", "Sources handled, by outcome (made, skipped: thumbnails "
                  "already current, rejected, removed).", ["outcome"])
REJECTED = Counter("hotpath_thumbnail_rejected_total", "Sources refused (dead-lettered), by reason.", ["reason"])
SOURCE_BYTES = Histogram("hotpath_thumbnail_source_bytes", "Size of each source downloaded, bytes.",
                         buckets=(1e4, 1e5, 5e5, 1e6, 2.5e6, 5e6, 1e7, 2.5e7, 5e7, 1e8))
SOURCE_PIXELS = Histogram("hotpath_thumbnail_source_pixels", "Width × height × frames of each source decoded.",
                          buckets=(1e4, 1e5, 1e6, 4e6, 1.2e7, 2.4e7, 5e7, 1e8))
PIPELINE_SECONDS = Histogram("hotpath_thumbnail_pipeline_seconds", "libvips work per source, by stage (header, "
                             "decode, resize_encode, total), seconds.", ["stage"],
                             buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
S3_SECONDS = Histogram("hotpath_thumbnail_s3_seconds", "S3 call latency by operation, seconds.", ["op"],
                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
S3_ERRORS = Counter("hotpath_thumbnail_s3_errors_total", "S3 calls that failed, by operation and error.", ["op", "error"])


def serve(host: str, port: int) -> bool:
    """Serve the default registry's /metrics on host:port (once per process); a port in use is logged and skipped,
    so a second worker on the host runs, unscraped, and says which setting to change. Returns whether it serves."""
    if not port:
        return False
    if (host, port) in _served:
        return True
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("metrics not served: %s:%d is taken (%s); give each worker its own HOTPATH_THUMB_METRICS_PORT",
                    host, port, exc.strerror or exc)
        return False
    _served.add((host, port))
    log.info("metrics on http://%s:%d/metrics", host, port)
    return True
