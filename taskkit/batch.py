"""Batching: concurrent jobs hand single items to a Batcher, which calls the downstream once per batch.

A batch is flushed when it reaches `max_items`, `max_bytes`, or has waited `linger_s`. Each job awaits
its own item's future, so retry and dead-letter stay per item (per job). A batch failing on a transient
error is retried whole (a few quick tries inside the batcher; then each item's job retries on its own
policy). On a permanent error the batch is bisected until the poison items are alone: at most
1 + 2·k·log2(n) downstream calls for k poison items in n, instead of n calls one by one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from taskkit import metrics, tracing
from taskkit.backpressure import AimdController
from taskkit.errors import RateLimited
from taskkit.retry import Classifier, RetryPolicy, classify

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("taskkit.batch")

# The downstream: takes the items, returns one result per item (a result may be an exception instance:
# that item failed alone) or raises (the whole call failed).
BatchCall = Callable[[list[Any]], Awaitable[Sequence[Any]]]


@dataclass
class Outcome:
    """The result of one item: `ok` with `value`, or failed with `error`."""

    ok: bool
    value: Any = None
    error: BaseException | None = None


async def bisect_call(items: list[Any], call: BatchCall, is_permanent: Callable[[BaseException], bool]) -> list[Outcome]:
    """Call the downstream with `items`; on a permanent whole-call error split in halves and recurse.

    Transient whole-call errors are not retried here: every item of that call gets the error.
    Pure apart from `call`, so the call-count bound has a plain unit test.
    """
    try:
        results = await call(items)
        if len(results) != len(items):
            raise ValueError(f"batch call returned {len(results)} results for {len(items)} items")
    except Exception as exc:
        if len(items) == 1 or not is_permanent(exc):
            return [Outcome(False, error=exc) for _ in items]
        mid = len(items) // 2
        left, right = await asyncio.gather(bisect_call(items[:mid], call, is_permanent),
                                           bisect_call(items[mid:], call, is_permanent))
        return left + right
    return [Outcome(False, error=r) if isinstance(r, BaseException) else Outcome(True, value=r) for r in results]


class Batcher(Generic[T, R]):
    """Collects items from concurrent callers of `submit` and flushes them to `call` in batches.

    Defaults: 64 items, no byte limit (set `max_bytes` and `sizeof`), 20 ms linger; a transient whole-batch
    failure is retried up to 3 times in the batcher (backoff 50 ms, cap 1 s) before the items fail.
    With an AIMD controller, each call first takes a token, reports success, and a RateLimited error
    becomes a slow-down signal.
    """

    def __init__(self, call: BatchCall, *, name: str = "batch", max_items: int = 64, max_bytes: int | None = None,
                 sizeof: Callable[[Any], int] | None = None, linger_s: float = 0.02,
                 classify_error: Classifier | None = None,
                 retry: RetryPolicy | None = None, aimd: AimdController | None = None) -> None:
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self.name = name
        self._call = call
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.sizeof = sizeof or (lambda item: len(item) if isinstance(item, bytes | str) else 0)
        self.linger_s = linger_s
        self.classify_error = classify_error
        self.retry = retry or RetryPolicy(max_attempts=3, base_s=0.05, cap_s=1.0)
        self.aimd = aimd
        self.calls = 0  # downstream calls made (for tests and benchmarks)
        self._pending: list[tuple[Any, asyncio.Future[Any]]] = []
        self._contexts: list[Any] = []  # the span context of each pending item's job: the batch span links to them
        self._bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()

    def _add(self, item: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        self._contexts.append(tracing.job_context())
        self._bytes += self.sizeof(item)
        if len(self._pending) >= self.max_items or (self.max_bytes is not None and self._bytes >= self.max_bytes):
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.linger_s, self._flush)
        return fut

    async def submit(self, item: T) -> R:
        """Add one item; wait for and return its own result (or raise its own error)."""
        return await self._add(item)

    async def submit_many(self, items: Sequence[T]) -> list[Outcome]:
        """Add several items of one job; returns one Outcome per item, in order (never raises per item).

        For jobs that carry many items: ARQ's cost per job is then shared by its items, which is what lets
        batches fill (see bench/RESULTS.md). The job decides what a partial failure means for it.
        """
        futs = [self._add(i) for i in items]
        done = await asyncio.gather(*futs, return_exceptions=True)
        return [Outcome(False, error=r) if isinstance(r, BaseException) else Outcome(True, value=r) for r in done]

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, self._pending, self._bytes = self._pending, [], 0
        contexts, self._contexts = self._contexts, []
        t = asyncio.get_running_loop().create_task(self._traced_run(batch, contexts))
        self._running.add(t)
        t.add_done_callback(self._running.discard)

    async def flush(self) -> None:
        """Send what is pending now and wait for every running batch."""
        self._flush()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    def _permanent(self, exc: BaseException) -> bool:
        return not classify(exc, self.classify_error).transient

    async def _one_call(self, items: list[Any]) -> Sequence[Any]:
        """One downstream call with AIMD accounting and whole-batch transient retries."""
        attempt = 0
        while True:
            attempt += 1
            if self.aimd is not None:
                await self.aimd.acquire()
            self.calls += 1
            metrics.BATCH_SIZE.labels(self.name).observe(len(items))
            try:
                results = await self._call(items)
            except Exception as exc:
                if isinstance(exc, RateLimited) and self.aimd is not None:
                    await self.aimd.slow_down()
                v = classify(exc, self.classify_error)
                if not v.transient or self.retry.exhausted(attempt):
                    raise
                await asyncio.sleep(self.retry.delay(attempt, hint=v.retry_after))
                continue
            if self.aimd is not None:
                await self.aimd.ok()
            return results

    async def _traced_run(self, batch: list[tuple[Any, asyncio.Future[Any]]], contexts: list[Any]) -> None:
        with tracing.batch(self.name, len(batch), contexts):
            await self._run(batch)

    async def _run(self, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        items = [i for i, _ in batch]
        try:
            outcomes = await bisect_call(items, self._one_call, self._permanent)
        except BaseException as exc:  # cancelled or a bug: never leave a caller waiting forever
            outcomes = [Outcome(False, error=exc) for _ in items]
            if isinstance(exc, asyncio.CancelledError):
                for _, fut in batch:
                    if not fut.done():
                        fut.cancel()
                raise
        for (_, fut), out in zip(batch, outcomes, strict=True):
            if fut.done():
                continue
            if out.ok:
                fut.set_result(out.value)
            else:
                fut.set_exception(out.error)  # type: ignore[arg-type]
