"""The ops API: stats, list, show, requeue, drop, purge and the audit log — one library used by the
CLI (`hotpath queue|retry|dlq`, in hotpath/queue_cli.py), the tests and the HTTP API alike; the CLI only
formats what this returns (as Sidekiq's api.rb under its web UI). Not `inspect.py`: that shadows the stdlib.

Reads go through indexes (`queues` set, `retry:<queue>` and `dlq:<queue>` sorted sets) and SCAN, never
KEYS. Every requeue/drop/purge that changes something is appended to an audit stream (who, when, what,
how many), capped at 10,000 entries.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson

from taskkit.connection import QueueRedis
from taskkit.deadletter import DeadLetterQueue
from taskkit.errors import JobConflict, JobNotFound
from taskkit.keys import DEFAULT_PREFIX, Keys
from taskkit.records import JobRecord
from taskkit.retryqueue import RetryQueue
from taskkit.scripts import Scripts

Kind = Literal["retry", "dead"]
AUDIT_MAXLEN = 10_000


@dataclass(frozen=True)
class Filter:
    """Which jobs a verb applies to. All given conditions must hold.

    `error` matches (case-insensitively) the error type or message; `older_than_s` / `newer_than_s`
    compare with the time of the last failure; `job_ids` restricts to those ids.
    """

    queue: str | None = None
    task: str | None = None
    error: str | None = None
    older_than_s: float | None = None
    newer_than_s: float | None = None
    job_ids: tuple[str, ...] = ()

    def matches(self, rec: JobRecord, now_ms: int) -> bool:
        if self.task and rec.task != self.task:
            return False
        if self.job_ids and rec.job_id not in self.job_ids:
            return False
        if self.error:
            needle = self.error.lower()
            if needle not in rec.error_type.lower() and needle not in rec.message.lower():
                return False
        age_s = (now_ms - rec.failed_ms) / 1000
        if self.older_than_s is not None and age_s < self.older_than_s:
            return False
        return not (self.newer_than_s is not None and age_s > self.newer_than_s)

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, ())}


@dataclass
class QueueStats:
    """One queue at a glance."""

    queue: str
    ready: int = 0
    scheduled: int = 0
    oldest_age_s: float = 0.0
    retrying: int = 0
    dead: int = 0
    workers: int = 0
    in_flight: int = 0
    rate_per_s: float = 0.0
    backpressure: str = "open"
    enqueued: int = 0
    rejected: int = 0
    completed: int = 0
    retried: int = 0
    died: int = 0


@dataclass
class ActionResult:
    """What a requeue/drop/purge did (or, with dry_run, would do)."""

    action: str
    kind: str
    count: int
    job_ids: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    dry_run: bool = False


class Inspector:
    """Operators' view of every queue under one key prefix. `user` is recorded in the audit log."""

    def __init__(self, redis: Any, *, prefix: str = DEFAULT_PREFIX, user: str = "unknown") -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self.user = user
        scripts = Scripts(redis)
        self.retry = RetryQueue(redis, self.keys, scripts)
        self.dead = DeadLetterQueue(redis, self.keys, scripts=scripts)

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, queue_redis: QueueRedis | str, *, prefix: str = DEFAULT_PREFIX, user: str = "unknown",
                      timeout_s: float = 5.0) -> AsyncIterator[Inspector]:
        """An Inspector on its own client of the queues' Redis (a QueueRedis, or a redis:// URL with `timeout_s`),
        closed on exit, for one-shot callers such as the CLI."""
        if isinstance(queue_redis, str):
            queue_redis = QueueRedis(url=queue_redis, timeout_s=timeout_s)
        redis = queue_redis.client()
        try:
            yield cls(redis, prefix=prefix, user=user)
        finally:
            await redis.aclose()

    # --- queues and stats ----------------------------------------------------------------------
    async def queues(self) -> list[str]:
        """Known queues: the `queues` index, plus any ARQ queue of this prefix found by SCAN."""
        names = {m.decode() for m in await self.redis.smembers(self.keys.queues)}
        async for key in self.redis.scan_iter(match=self.keys.arq_queue("*"), count=500, _type="zset"):
            names.add(self.keys.queue_of_arq(key.decode()))
        return sorted(names)

    async def stats(self, queue: str | None = None) -> list[QueueStats]:
        out = []
        for q in [queue] if queue else await self.queues():
            out.append(await self._stats(q))
        return out

    async def _stats(self, q: str) -> QueueStats:
        k = self.keys
        now = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as p:
            p.zcount(k.arq_queue(q), "-inf", now)
            p.zcount(k.arq_queue(q), f"({now}", "+inf")
            p.zrangebyscore(k.arq_queue(q), "-inf", now, start=0, num=1, withscores=True)
            p.zcard(k.retry_index(q))
            p.zcard(k.dlq_index(q))
            p.zrangebyscore(k.workers(q), now - 60_000, "+inf")
            p.hgetall(k.backpressure(q))
            p.hgetall(k.stats(q))
            ready, scheduled, oldest, retrying, dead, workers, bp, st = await p.execute()
        async with self.redis.pipeline(transaction=False) as p:
            for w in workers:
                p.hmget(k.health(q, w.decode()), "in_flight", "rate")
            health = [h for h in await p.execute() if h[0] is not None]
        st = {a.decode(): int(b) for a, b in st.items()}
        return QueueStats(
            queue=q, ready=ready, scheduled=scheduled,
            oldest_age_s=round((now - oldest[0][1]) / 1000, 3) if oldest else 0.0,
            retrying=retrying, dead=dead, workers=len(health),
            in_flight=sum(int(h[0]) for h in health),
            rate_per_s=round(sum(float(h[1] or 0) for h in health), 3),
            backpressure="closed" if bp.get(b"closed") == b"1" else "open",
            enqueued=st.get("enqueued", 0), rejected=st.get("rejected", 0), completed=st.get("completed", 0),
            retried=st.get("retried", 0), died=st.get("dead", 0),
        )

    # --- list / show -----------------------------------------------------------------------------
    def _store(self, kind: Kind) -> RetryQueue | DeadLetterQueue:
        if kind not in ("retry", "dead"):
            raise ValueError(f"kind must be 'retry' or 'dead', not {kind!r}")
        return self.retry if kind == "retry" else self.dead

    async def iter(self, kind: Kind, flt: Filter | None = None) -> AsyncIterator[JobRecord]:
        flt = flt or Filter()
        now = int(time.time() * 1000)
        queues = [flt.queue] if flt.queue else await self.queues()
        store = self._store(kind)
        for q in queues:
            async for rec in store.iter(q):
                if flt.matches(rec, now):
                    yield rec

    async def list(self, kind: Kind, flt: Filter | None = None, limit: int | None = None) -> list[JobRecord]:
        """Jobs in the retry (`"retry"`) or dead-letter (`"dead"`) queue matching `flt`."""
        out: list[JobRecord] = []
        async for rec in self.iter(kind, flt):
            out.append(rec)
            if limit is not None and len(out) >= limit:
                break
        return out

    async def count(self, kind: Kind, flt: Filter | None = None) -> int:
        return len(await self.list(kind, flt))

    async def show(self, kind: Kind, job_id: str, queue: str | None = None) -> JobRecord:
        """One job with its traceback; searches every queue when `queue` is not given."""
        store = self._store(kind)
        for q in [queue] if queue else await self.queues():
            rec = await store.get(q, job_id)
            if rec is not None:
                return rec
        where = "retry queue" if kind == "retry" else "dead-letter queue"
        raise JobNotFound(f"no job {job_id!r} in the {where}" + (f" of {queue!r}" if queue else ""))

    # --- actions ---------------------------------------------------------------------------------
    async def requeue(self, kind: Kind, flt: Filter, *, dry_run: bool = False) -> ActionResult:
        """Retry queue: run the matching jobs now. Dead-letter queue: put them back with fresh attempts."""
        return await self._act("requeue", kind, flt, dry_run)

    async def drop(self, flt: Filter, *, dry_run: bool = False) -> ActionResult:
        """Delete matching jobs waiting in the retry queue (with their ARQ job keys)."""
        return await self._act("drop", "retry", flt, dry_run)

    async def purge(self, flt: Filter, *, dry_run: bool = False) -> ActionResult:
        """Delete matching jobs from the dead-letter queue."""
        return await self._act("purge", "dead", flt, dry_run)

    async def _act(self, action: str, kind: Kind, flt: Filter, dry_run: bool) -> ActionResult:
        recs = await self.list(kind, flt)
        res = ActionResult(action=action, kind=kind, count=0, dry_run=dry_run)
        if dry_run:
            res.count = len(recs)
            res.job_ids = [r.job_id for r in recs]
            return res
        if action == "purge":
            by_queue: dict[str, list[str]] = {}
            for r in recs:
                by_queue.setdefault(r.queue, []).append(r.job_id)
            for q, ids in by_queue.items():
                res.count += await self.dead.remove(q, ids)
                res.job_ids += ids
        else:
            for r in recs:
                try:
                    if kind == "dead":
                        await self.dead.requeue(r.queue, r.job_id)
                        ok = 1
                    elif action == "requeue":
                        ok = await self.retry.run_now(r.queue, r.job_id)
                    else:
                        ok = await self.retry.drop(r.queue, r.job_id)
                except (JobNotFound, JobConflict) as exc:
                    res.skipped.append({"job_id": r.job_id, "why": str(exc)})
                    continue
                if ok == 1:
                    res.count += 1
                    res.job_ids.append(r.job_id)
                else:
                    why = "running right now" if ok == -1 else "no longer waiting for a retry"
                    res.skipped.append({"job_id": r.job_id, "why": why})
        await self._audit(res, flt)
        return res

    # --- audit -----------------------------------------------------------------------------------
    async def _audit(self, res: ActionResult, flt: Filter) -> None:
        entry = {
            "who": self.user, "at_ms": int(time.time() * 1000), "action": f"{res.kind}.{res.action}",
            "filter": orjson.dumps(flt.describe()).decode(), "count": res.count,
            "job_ids": orjson.dumps(res.job_ids[:100]).decode(),
        }
        await self.redis.xadd(self.keys.audit, entry, maxlen=AUDIT_MAXLEN, approximate=True)

    async def audit(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest audit entries, newest first."""
        rows = await self.redis.xrevrange(self.keys.audit, count=limit)
        out = []
        for entry_id, fields in rows:
            d = {a.decode(): b.decode() for a, b in fields.items()}
            out.append({
                "id": entry_id.decode(), "who": d.get("who", ""), "at_ms": int(d.get("at_ms", 0)),
                "action": d.get("action", ""), "filter": orjson.loads(d.get("filter", "{}")),
                "count": int(d.get("count", 0)), "job_ids": orjson.loads(d.get("job_ids", "[]")),
            })
        return out
