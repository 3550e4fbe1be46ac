"""Trace context across the queue: the producer's span context rides in each job's kwargs (TRACE_KWARG), the worker
continues it (one span per attempt, all children of the producer's span), a batch links to the jobs it serves.

Why a reserved kwarg: ARQ's Worker and taskkit's FastWorker both hand a job's kwargs to taskkit's task wrapper
unchanged and ARQ's job format round-trips a dict, so the context needs no change to ARQ. Only opentelemetry-api
is used: until the edge (hotpath/tracing.py) sets an SDK provider every span here is the API's no-op one and no
job carries a context.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from arq.worker import Retry
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

# The reserved kwarg of a job that carries its W3C trace context ({"traceparent": ..., "tracestate": ...}).
TRACE_KWARG = "_taskkit_trace"
SYSTEM = "taskkit"

tracer = trace.get_tracer("taskkit")


@contextlib.contextmanager
def send(task: str, queue: str, jobs: int) -> Iterator[trace.Span]:
    """The producer's span (kind PRODUCER) around one enqueue of `jobs` jobs; current while the script runs."""
    with tracer.start_as_current_span(f"send {task}", kind=SpanKind.PRODUCER) as span:
        if span.is_recording():
            span.set_attributes({"messaging.system": SYSTEM, "messaging.operation.type": "send",
                                 "messaging.destination.name": queue, "taskkit.task": task,
                                 "messaging.batch.message_count": jobs})
        yield span


def carry(kwargs: dict[str, Any], span: trace.Span) -> dict[str, Any]:
    """`kwargs` plus TRACE_KWARG holding `span`'s context; `kwargs` itself when the span has no valid context
    (tracing off: the job is written exactly as without tracing)."""
    if not span.get_span_context().is_valid:
        return kwargs
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return {**kwargs, TRACE_KWARG: carrier}


def enqueued(span: trace.Span, outcomes: Sequence[Any]) -> None:
    """Name the jobs of an enqueue on its span: their ids and how many were new (the rest were duplicates)."""
    if span.is_recording():
        span.set_attributes({"taskkit.accepted": sum(1 for e in outcomes if e.created),
                             "taskkit.duplicates": sum(1 for e in outcomes if not e.created)})
        if len(outcomes) == 1:
            span.set_attribute("messaging.message.id", outcomes[0].job_id)


@contextlib.contextmanager
def process(task: str, queue: str, ctx: dict[str, Any], carrier: Any) -> Iterator[trace.Span]:
    """The worker's span (kind CONSUMER) of one attempt of a job, child of the producer's span when the job
    carries one; its outcome is `done`, `retry` (with the error and the delay), `cancelled` or `failed`."""
    parent = propagate.extract(carrier) if isinstance(carrier, dict) else None
    with tracer.start_as_current_span(f"process {task}", context=parent, kind=SpanKind.CONSUMER,
                                      record_exception=False, set_status_on_exception=False) as span:
        recording = span.is_recording()
        if recording:
            span.set_attributes({"messaging.system": SYSTEM, "messaging.operation.type": "process",
                                 "messaging.destination.name": queue, "messaging.message.id": ctx.get("job_id", ""),
                                 "taskkit.task": task, "taskkit.attempt": ctx.get("job_try", 1)})
        try:
            yield span
        except Retry as exc:
            if recording:
                span.set_attributes({"taskkit.outcome": "retry",
                                     "taskkit.retry_in_s": (exc.defer_score or 0) / 1000})
                _failed(span, exc.__cause__ or exc)
            raise
        except asyncio.CancelledError:
            if recording:
                span.set_attribute("taskkit.outcome", "cancelled")
            raise
        except BaseException as exc:
            if recording:
                span.set_attribute("taskkit.outcome", "failed")
                _failed(span, exc)
            raise
        if recording:
            span.set_attribute("taskkit.outcome", "done")


def _failed(span: trace.Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:300]))


def job_context() -> trace.SpanContext:
    """The current span's context (a batch item remembers the job that submitted it)."""
    return trace.get_current_span().get_span_context()


@contextlib.contextmanager
def batch(name: str, items: int, contexts: Iterable[trace.SpanContext]) -> Iterator[trace.Span]:
    """The span of one batch flush, with a link to each job it serves; its parent is the job that opened the
    batch, so that job's trace holds the downstream call and every other job reaches it by its link."""
    valid: dict[int, trace.SpanContext] = {}
    for c in contexts:
        if c.is_valid:
            valid.setdefault(c.span_id, c)
    first = next(iter(valid.values()), None)
    parent = trace.set_span_in_context(trace.NonRecordingSpan(first)) if first is not None else None
    links = [Link(c) for c in valid.values()]
    with tracer.start_as_current_span(f"batch {name}", context=parent, links=links) as span:
        if span.is_recording():
            span.set_attributes({"taskkit.batch": name, "taskkit.batch.items": items,
                                 "taskkit.batch.jobs": len(valid)})
        yield span


__all__ = ["TRACE_KWARG", "batch", "carry", "enqueued", "job_context", "process", "send"]
