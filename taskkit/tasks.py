"""Task declaration: a task is a plain async function `f(ctx, *args, **kwargs)` plus a TaskSpec.

`@task(queue=..., retry=RetryPolicy(...), timeout=..., classify=..., idempotency_key=...)` attaches the
spec and returns the function unchanged, so it can still be called directly in tests and registered
with ARQ; `taskkit.worker.worker_settings` wraps it with the retry / dead-letter rules at worker build.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from taskkit.idempotency import KeyFunc
from taskkit.retry import Classifier, RetryPolicy

TaskFunc = Callable[..., Awaitable[Any]]

DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class TaskSpec:
    """Everything taskkit needs to run, retry and dedup one task.

    Defaults: RetryPolicy() (5 attempts, full-jitter backoff base 1 s cap 300 s), timeout 300 s,
    `default_classify`, no idempotency key.
    """

    fn: TaskFunc
    name: str
    queue: str
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float = DEFAULT_TIMEOUT_S
    classify: Classifier | None = None
    idempotency_key: KeyFunc | None = None


def task(fn: TaskFunc | None = None, *, queue: str, name: str | None = None, retry: RetryPolicy | None = None,
         timeout: float = DEFAULT_TIMEOUT_S, classify: Classifier | None = None,
         idempotency_key: KeyFunc | None = None) -> Any:
    """Declare a task. `idempotency_key(*args, **kwargs)` returns the dedup key of a call (or None)."""

    def wrap(f: TaskFunc) -> TaskFunc:
        if timeout <= 0:
            raise ValueError("timeout must be > 0 seconds")
        f.taskkit = TaskSpec(  # type: ignore[attr-defined]
            fn=f, name=name or f.__name__, queue=queue, retry=retry or RetryPolicy(), timeout_s=timeout,
            classify=classify, idempotency_key=idempotency_key,
        )
        return f

    return wrap(fn) if fn is not None else wrap


def spec_of(fn: Any) -> TaskSpec:
    """The TaskSpec of a declared task (TypeError if `fn` was not declared with @task)."""
    if isinstance(fn, TaskSpec):
        return fn
    spec = getattr(fn, "taskkit", None)
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"{fn!r} is not a taskkit task: decorate it with @taskkit.task(queue=...)")
    return spec
