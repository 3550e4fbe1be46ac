"""Helpers of the end-to-end index tests: `hotpath worker index` as a real process (hashing embedder, short
timeouts and backoffs from its settings), the composed API in-process, and polling with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from index_worker.indexer import IndexEvent
from index_worker.store import MilvusStore, message_pk
from taskkit import Inspector, JobSpec, Keys, Producer

BIN = Path(sys.executable).parent
DIM = 32
SECRET = "index-tests-secret-0123456789-0123456789"


def collection_name() -> str:
    return f"e_{uuid.uuid4().hex[:12]}"


def worker_env(redis_url: str, prefix: str, milvus_uri: str, collection: str, **extra: Any) -> dict[str, str]:
    """A worker's environment: this test's Redis prefix and collection, the hashing embedder, short timeouts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTPATH_")}
    env.update(
        HOTPATH_REDIS_URL=redis_url, HOTPATH_TASKKIT_PREFIX=prefix, HOTPATH_LOG_LEVEL="INFO",
        HOTPATH_MILVUS_URI=milvus_uri, HOTPATH_MILVUS_COLLECTION=collection, HOTPATH_MILVUS_TIMEOUT_S="1",
        HOTPATH_EMBEDDER="hash", HOTPATH_EMBEDDER_DIM=str(DIM), HOTPATH_INDEX_TEXT_MAX_BYTES="2000",
        HOTPATH_INDEX_METRICS_PORT="0", HOTPATH_INDEX_CONCURRENCY="64", HOTPATH_INDEX_LINGER_S="0.05",
        HOTPATH_INDEX_LEASE_TTL_S="9", HOTPATH_INDEX_TASK_TIMEOUT_S="20", HOTPATH_INDEX_MAX_ATTEMPTS="30",
        HOTPATH_INDEX_BACKOFF_BASE_S="0.5", HOTPATH_INDEX_BACKOFF_CAP_S="4",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Worker:
    """One `hotpath worker index` process; `ready()` waits for its "index worker ready" log line."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        self.proc = subprocess.Popen([str(BIN / "hotpath"), "worker", "index"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def ready(self, timeout: float = 60) -> Worker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if '"msg":"index worker ready"' in self.text()[self._offset:]:
                return self
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            await asyncio.sleep(0.1)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@contextlib.asynccontextmanager
async def workers(n: int, env: dict[str, str], log_dir: Path):
    """`n` running worker processes (stopped afterwards)."""
    started = [Worker(env, log_dir / f"worker{i}.log").start() for i in range(n)]
    try:
        for w in started:
            await w.ready()
        yield started
    finally:
        for w in started:
            w.stop()


async def until(check: Callable[[], Awaitable[Any]], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"{what}: not reached within {timeout}s (last: {last!r})")


def store_for(milvus_uri: str, collection: str, timeout_s: float = 10) -> MilvusStore:
    return MilvusStore(milvus_uri, collection=collection, dim=DIM, timeout_s=timeout_s, text_max_bytes=2000)


async def enqueue_raw(redis: Redis, prefix: str, events: list[IndexEvent]) -> None:
    """Enqueue events as jobs without idempotency keys: every copy reaches a worker (at-least-once redelivery),
    so only the version guard stands between duplicates and the index."""
    producer = Producer(redis, prefix=prefix)
    jobs = [JobSpec(args=(asdict(ev),)) for ev in events]
    for start in range(0, len(jobs), 500):
        await producer.enqueue_many("index_event", jobs[start:start + 500], queue="index", backpressure=False)


async def queue_idle(redis: Redis, prefix: str) -> bool:
    """No job queued, running or waiting in the retry queue."""
    keys = Keys(prefix)
    inspector = Inspector(redis, prefix=prefix)
    queued = await redis.zcard(keys.arq_queue("index"))
    return queued == 0 and await inspector.count("retry") == 0


async def rows(store: MilvusStore, tenant: str, message_ids: list[str]) -> dict[str, dict]:
    got = await store.get([message_pk(tenant, m) for m in message_ids])
    return {r["message_id"]: r for r in got}
