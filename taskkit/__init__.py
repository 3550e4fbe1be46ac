"""taskkit: the task framework both hotpath workers use, on ARQ.

Adds what ARQ lacks: a retry policy with backoff and error classification, a visible retry queue, a
dead-letter queue, idempotency keys, producer backpressure, an AIMD rate controller, batching, metrics
and an ops API (`Inspector`; its CLI, `hotpath queue|retry|dlq`, lives at the edge in hotpath/).
A worker is still an ARQ WorkerSettings class and a task is still `async f(ctx, ...)`.

    from taskkit import task, RetryPolicy, worker_settings, Producer, QueueFull
"""

from taskkit.backpressure import AimdController, AimdPolicy, Watermarks
from taskkit.batch import Batcher
from taskkit.deadletter import DeadLetterPolicy
from taskkit.errors import (
    JobConflict,
    JobNotFound,
    PermanentError,
    QueueFull,
    QueueUnavailable,
    RateLimited,
    TaskkitError,
    TransientError,
    WorkerLost,
)
from taskkit.fastworker import FastWorker
from taskkit.idempotency import Enqueued
from taskkit.keys import Keys
from taskkit.ops import Filter, Inspector
from taskkit.producer import EnqueuedMany, JobSpec, Producer
from taskkit.records import JobRecord
from taskkit.retry import RetryPolicy, Verdict
from taskkit.tasks import TaskSpec, task
from taskkit.worker import redis_settings_from_url, worker_settings

__all__ = [
    "AimdController", "AimdPolicy", "Batcher", "DeadLetterPolicy", "Enqueued", "EnqueuedMany", "FastWorker", "Filter",
    "Inspector", "JobConflict", "JobNotFound", "JobRecord", "JobSpec", "Keys", "PermanentError", "Producer", "QueueFull",
    "QueueUnavailable",
    "RateLimited", "RetryPolicy", "TaskSpec", "TaskkitError", "TransientError", "Verdict", "Watermarks",
    "WorkerLost", "redis_settings_from_url", "task", "worker_settings",
]
