"""Prometheus metrics of taskkit, and the health record each worker refreshes in Redis.

Counters and histograms are process-local (scraped from each worker); gauges of shared state (depth,
oldest age, retry/dead-letter sizes) are refreshed by every worker's health loop from Redis, so any one
worker's scrape shows the queue as a whole. Why a health record in Redis too: `hotpath queue stats` and
the producers' Retry-After estimate need the live workers' view without scraping each process (the
record is written by `taskkit.worker.Runtime.tick`, every `health_interval_s`, default 5 s).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

QUEUE_DEPTH = Gauge("taskkit_queue_depth", "Jobs ready or running in the queue.", ["queue"])
QUEUE_SCHEDULED = Gauge("taskkit_queue_scheduled", "Jobs in the queue scheduled for later (retries, deferred).", ["queue"])
OLDEST_AGE = Gauge("taskkit_queue_oldest_age_seconds", "Age of the oldest ready job.", ["queue"])
IN_FLIGHT = Gauge("taskkit_jobs_in_flight", "Jobs running in this process.", ["queue"])
COMPLETED = Counter("taskkit_jobs_completed_total", "Jobs that succeeded.", ["queue", "task"])
RETRIED = Counter("taskkit_jobs_retried_total", "Attempts that failed and were scheduled again.", ["queue", "task", "error"])
DEAD = Counter("taskkit_jobs_dead_total", "Jobs moved to the dead-letter queue.", ["queue", "task", "error"])
DLQ_SIZE = Gauge("taskkit_dead_letter_size", "Jobs in the dead-letter queue.", ["queue"])
RETRY_SIZE = Gauge("taskkit_retry_queue_size", "Jobs waiting for another attempt.", ["queue"])
BATCH_SIZE = Histogram(
    "taskkit_batch_size", "Items per downstream batch call.", ["batcher"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
AIMD_LIMIT = Gauge("taskkit_aimd_limit", "Current AIMD rate limit (calls/s).", ["name"])
REJECTIONS = Counter("taskkit_backpressure_rejections_total", "Enqueues refused with QueueFull.", ["queue"])
