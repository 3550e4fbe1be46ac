"""The typed errors of taskkit: what a task raises to steer its retry, and what the ops API raises.

A task says how its failure should be treated by the exception type (TransientError → retry later,
PermanentError → dead-letter now); anything else goes through the task's classifier.
"""

from __future__ import annotations


class TaskkitError(Exception):
    """Base class of every error taskkit raises or understands."""


class TransientError(TaskkitError):
    """A failure that may go away: the job is retried with backoff (or after `retry_after` seconds)."""

    def __init__(self, message: str = "transient failure", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self):  # keep retry_after through pickling (ARQ pickles the failed result)
        return (_rebuild, (type(self), self.args, self.__dict__))


class RateLimited(TransientError):
    """The downstream asked us to slow down (HTTP 429, Milvus rate limit): transient, and an AIMD signal."""


class PermanentError(TaskkitError):
    """A failure that will not go away by retrying (bad input, schema mismatch): dead-lettered at once."""


class QueueFull(TaskkitError):
    """The queue is over its high watermark; try again after `retry_after` seconds (HTTP 429 Retry-After)."""

    def __init__(self, queue: str, retry_after: float, *, depth: int = 0, oldest_age_s: float = 0.0) -> None:
        super().__init__(
            f"queue {queue!r} is full (depth {depth}, oldest job {oldest_age_s:.1f}s old): "
            f"retry after {retry_after:.1f}s"
        )
        self.queue = queue
        self.retry_after = retry_after
        self.depth = depth
        self.oldest_age_s = oldest_age_s

    def __reduce__(self):
        return (_rebuild, (type(self), self.args, self.__dict__))


class QueueUnavailable(TaskkitError):
    """The queue's Redis did not answer (refused, timed out): nothing was enqueued; the caller may try again
    (the API answers 503 with dependency `queue`)."""

    def __init__(self, queue: str, message: str) -> None:
        super().__init__(f"queue {queue!r} is unavailable: {message}")
        self.queue = queue

    def __reduce__(self):
        return (_rebuild, (type(self), self.args, self.__dict__))


class JobNotFound(TaskkitError):
    """No job with that id in the retry or dead-letter queue (it may have run, been requeued or purged)."""


class JobConflict(TaskkitError):
    """The operation cannot proceed because of the job's state (e.g. a job with that id is already queued)."""


class UnknownTask(TaskkitError):
    """enqueue() got a task name with no queue: pass `queue=` or the decorated function."""


def _rebuild(cls, args, state):
    obj = Exception.__new__(cls)
    obj.args = args
    obj.__dict__.update(state)
    return obj


class WorkerLost(PermanentError):
    """A job's last allowed attempts ended with the worker dying or stopping (SIGKILL, OOM, deploy)."""
