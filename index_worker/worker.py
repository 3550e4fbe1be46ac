"""The index worker process: a taskkit (ARQ) worker on the `index` queue, one job per message event, the events
of concurrent jobs batched by taskkit's Batcher into Indexer.apply (validate → claim → embed → write → confirm).

Runnable as `hotpath worker index` or `arq index_worker.worker.WorkerSettings` (the latter reads the same HOTPATH_*
settings at import). At start it loads the embedder once, creates the collection if missing (a Milvus that does not
answer stops the worker with HOTPATH_MILVUS_URI named) and serves /metrics on HOTPATH_INDEX_METRICS_PORT.
Per event: rejected → PermanentError with the reason (dead-lettered alone); another writer holding the message →
waits briefly in place, then TransientError; Milvus transient → the batch is retried, then each job on its backoff;
Milvus overloaded → RateLimited, which slows the shared AIMD rate of every worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from index_worker.config import QUEUE, TASK, WorkerConfig
from index_worker.guard import VersionGuard
from index_worker.indexer import BatchResult, Indexer, IndexEvent
from index_worker.milvus_errors import MilvusPermanent, MilvusTransient
from index_worker.store import quiet_pymilvus_logs
from taskkit import task
from taskkit.backpressure import AimdController
from taskkit.batch import Batcher
from taskkit.connection import QueueRedis
from taskkit.errors import PermanentError, TransientError
from taskkit.keys import Keys
from taskkit.retry import RetryPolicy
from taskkit.worker import service_worker_settings

log = logging.getLogger("index_worker")
BUSY_POLL_S = (0.02, 0.5)  # first and longest pause while another batch holds a message's lease
_metrics_servers: set[tuple[str, int]] = set()


@task(queue=QUEUE, timeout=5)
async def ping(ctx) -> str:
    """Liveness probe task: enqueue `ping` on the `index` queue; the answer is 'pong'."""
    return "pong"


class Busy(TransientError):
    """Another batch holds this message's lease (it is writing another version): try again after it."""


def describe(ev: IndexEvent) -> str:
    """How an event is named in errors and logs."""
    if ev.op == "delete_room":
        return f"delete_room of room {ev.room_id!r} (tenant {ev.tenant_id!r})"
    return f"{ev.op} of message {ev.message_id!r} version {ev.version} (tenant {ev.tenant_id!r})"


def event_from_job(payload: Any) -> IndexEvent:
    """The IndexEvent of a job's payload (index_worker/intake.py `to_job`); a malformed one is permanent."""
    if not isinstance(payload, dict):
        raise PermanentError(f"an index job carries one event as a dict, got {type(payload).__name__}")
    try:
        vector = payload.get("vector")
        return IndexEvent(
            op=str(payload["op"]), tenant_id=str(payload["tenant_id"]), room_id=str(payload.get("room_id", "")),
            message_id=str(payload.get("message_id", "")), version=int(payload.get("version", 0)),
            text=str(payload.get("text", "")), sender=str(payload.get("sender", "")),
            created_at=int(payload.get("created_at", 0)), vector=tuple(vector) if vector is not None else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PermanentError(f"malformed index event ({type(exc).__name__}: {exc}); the shape is in "
                             "docs/index-events.md") from exc


def outcomes(events: list[IndexEvent], result: BatchResult,
             failed_write: Callable[[IndexEvent], str | None] = lambda ev: None) -> list[Any]:
    """One result per event of a batch, in order: an outcome name, or the exception that event alone fails with.
    `failed_write(ev)` is the error of this process's earlier write of the message whose lease is still held."""
    by_id: dict[int, Any] = {}
    for name, evs in (("indexed", result.upserted), ("deleted", result.deleted),
                      ("room_deleted", result.rooms_deleted), ("stale", result.stale)):
        for ev in evs:
            by_id[id(ev)] = name
    for ev in result.busy:
        cause = failed_write(ev)
        why = (f"an earlier write of it failed ({cause}) but may still land, so its lease is kept until it expires"
               if cause else "another write holds its lease (a batch writing another version, or a write that timed "
                             "out elsewhere)")
        by_id[id(ev)] = Busy(f"{describe(ev)}: {why}", retry_after=result.retry_after_s)
    for ev, reason in result.rejected:
        by_id[id(ev)] = PermanentError(f"{describe(ev)} cannot be indexed: {reason}")
    for ev in result.lost:
        log.warning("%s was written after its lease expired while a newer version was claimed; the newer "
                    "version's write may have landed first (raise HOTPATH_INDEX_LEASE_TTL_S)", describe(ev))
    return [by_id.get(id(ev), RuntimeError(f"{describe(ev)}: the indexer gave no outcome")) for ev in events]


class IndexRuntime:
    """Per worker process: the embedder (loaded once), the store, the guard, the indexer and the batcher."""

    def __init__(self, config: WorkerConfig, *, queue_redis: QueueRedis, taskkit_prefix: str) -> None:
        self.config = config
        self.queue_redis = queue_redis  # the guard and the AIMD state live beside the queue's keys
        self.keys = Keys(taskkit_prefix)
        self.redis: Redis | None = None
        self.store: Any = None
        self.embedder: Any = None
        self.batcher: Batcher | None = None
        self.busy_wait_s = min(5.0, config.task_timeout_s / 4)
        self._failed_writes: dict[tuple[str, str], tuple[str, float]] = {}  # message → (error, lease expiry)

    def _failed_write(self, ev: IndexEvent) -> str | None:
        entry = self._failed_writes.get((ev.tenant_id, ev.message_id))
        if entry is None:
            return None
        if entry[1] < time.monotonic():
            now = time.monotonic()
            for key in [k for k, (_, until) in self._failed_writes.items() if until < now]:
                del self._failed_writes[key]
            return None
        return entry[0]

    async def start(self, _settings: Any = None) -> None:
        """Load the embedder, ensure the collection, build the batcher, serve /metrics (the worker's start check)."""
        cfg = self.config
        quiet_pymilvus_logs()
        self._serve_metrics()
        self.embedder = cfg.embedder.build()
        load = getattr(self.embedder, "load", None)
        if load is not None:
            started = time.monotonic()
            await load()
            log.info("embedder loaded", extra={"embedder": self.embedder.name, "seconds": round(time.monotonic() - started, 2)})
        self.store = cfg.store.build(self.embedder.dim)
        try:
            await self.store.ensure_collection()
        except MilvusPermanent as exc:
            raise RuntimeError(str(exc)) from exc
        except MilvusTransient as exc:
            raise RuntimeError(f"Milvus at {cfg.store.uri} does not answer ({exc}); check HOTPATH_MILVUS_URI") from exc
        self.redis = self.queue_redis.client()
        guard = VersionGuard(self.redis, cfg.guard_prefix, lease_ttl_s=cfg.lease_ttl_s, tombstone_ttl_s=cfg.tombstone_ttl_s)
        indexer = Indexer(guard, self.store, self.embedder, embed_batch_size=cfg.embedder.batch_size)
        aimd = AimdController(self.redis, f"milvus:{cfg.store.collection}", keys=self.keys)
        self.indexer = indexer

        async def apply(events: list[IndexEvent]) -> list[Any]:
            try:
                result = await indexer.apply(events)
            except MilvusTransient as exc:  # leases of a write that may have been sent are kept: remember why
                until = time.monotonic() + cfg.lease_ttl_s
                for ev in events:
                    self._failed_writes[(ev.tenant_id, ev.message_id)] = (str(exc), until)
                raise
            return outcomes(events, result, self._failed_write)

        self.batcher = Batcher(apply, name=QUEUE, max_items=cfg.batch_items, max_bytes=cfg.store.batch_bytes,
                               sizeof=_event_bytes, linger_s=cfg.linger_s, aimd=aimd)
        log.info("index worker ready", extra={"collection": cfg.store.collection, "embedder": self.embedder.name,
                                              "dim": self.embedder.dim, "batch": cfg.batch_items})

    def _serve_metrics(self) -> None:
        host, port = self.config.metrics_host, self.config.metrics_port
        if not port or (host, port) in _metrics_servers:
            return
        from prometheus_client import start_http_server

        try:
            start_http_server(port, addr=host)
        except OSError as exc:  # a second worker on this host: it runs, unscraped, and says so
            log.warning("metrics not served: %s:%d is taken (%s); give each worker its own HOTPATH_INDEX_METRICS_PORT",
                        host, port, exc.strerror or exc)
            return
        _metrics_servers.add((host, port))
        log.info("metrics on http://%s:%d/metrics", host, port)

    async def submit(self, ev: IndexEvent) -> str:
        """Index one event through the batcher; waits in place (briefly) while another batch holds the message."""
        assert self.batcher is not None, "IndexRuntime.start() was not run"
        deadline = time.monotonic() + self.busy_wait_s
        pause = BUSY_POLL_S[0]
        while True:
            try:
                return await self.batcher.submit(ev)
            except Busy:
                if time.monotonic() + pause > deadline:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, BUSY_POLL_S[1])

    async def close(self, _ctx: Any = None) -> None:
        """Send what is pending, then close the store and Redis."""
        if self.batcher is not None:
            await self.batcher.flush()
        if self.store is not None:
            await self.store.close()
        aclose = getattr(self.embedder, "aclose", None)
        if aclose is not None:
            await aclose()
        if self.redis is not None:
            await self.redis.aclose()


def _event_bytes(ev: IndexEvent) -> int:
    return len(ev.text.encode()) + 8 * len(ev.vector or ()) + 256


def index_task(runtime: IndexRuntime) -> Any:
    """The `index_event` task of one worker (its retry policy and timeout from the runtime's config)."""
    cfg = runtime.config

    async def index_event(ctx: dict[str, Any], event: dict[str, Any]) -> str:
        """Index one message event (upsert | delete | delete_room); returns its outcome (indexed, deleted,
        room_deleted, stale)."""
        return await runtime.submit(event_from_job(event))

    retry = RetryPolicy(max_attempts=cfg.max_attempts, base_s=cfg.backoff_base_s, cap_s=cfg.backoff_cap_s)
    return task(queue=QUEUE, name=TASK, timeout=cfg.task_timeout_s, retry=retry)(index_event)


def build_worker_settings(settings: Any) -> type:
    """The ARQ WorkerSettings class of the index queue, from IndexWorkerSettings."""
    config = WorkerConfig.from_settings(settings)
    runtime = IndexRuntime(config, queue_redis=settings.queue_redis_config(), taskkit_prefix=settings.taskkit_prefix)
    cls = service_worker_settings(QUEUE, [ping, index_task(runtime)], settings, concurrency=config.concurrency,
                                  check=runtime.start, on_shutdown=runtime.close)
    cls.index_runtime = runtime  # tests and benchmarks reach the process's runtime through the class
    return cls


def __getattr__(name: str):
    # `arq index_worker.worker.WorkerSettings`: settings are read from the environment only then.
    if name == "WorkerSettings":
        from hotpath.settings import IndexWorkerSettings, load

        return build_worker_settings(load(IndexWorkerSettings))
    raise AttributeError(name)
