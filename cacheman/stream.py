"""The events stream consumer: change events from a Redis Stream (an outbox relay) through a consumer group.

An entry is XACKed only after its event is applied; entries pending too long on a dead consumer are
claimed with XAUTOCLAIM by a live one. Entries that can never apply go to `<stream>:dead` (then acked).
On a Cluster the stream and its group are one key, so one slot (XREADGROUP BLOCK holds a connection to that
node); `<stream>:dead` may live on another node, so its XADD is sent before the XACK, not pipelined with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

from pydantic import ValidationError
from redis.exceptions import ResponseError

from cacheman import metrics as m
from cacheman.errors import DependencyUnavailable
from cacheman.events import Event, EventApplier
from cacheman.keys import valid_id
from cacheman.redisconn import REDIS_ERRORS, AnyRedis

log = logging.getLogger("cacheman.stream")


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class StreamConsumer:
    """Reads `stream` as `consumer` in `group`; entry fields: `tenant`, `event` (the JSON of one event)."""

    def __init__(
        self,
        redis: AnyRedis,
        applier: EventApplier,
        *,
        stream: str,
        group: str = "cacheman",
        consumer: str = "",
        claim_idle_ms: int = 30_000,
        batch: int = 100,
        block_ms: int = 500,
    ) -> None:
        self.redis = redis
        self.applier = applier
        self.stream = stream
        self.dead_stream = stream + ":dead"
        self.group = group
        self.consumer = consumer or default_consumer_name()
        self.claim_idle_ms = claim_idle_ms
        self.batch = batch
        self.block_ms = block_ms
        self._task: asyncio.Task | None = None
        self._own_pending_done = False
        # Each API process joins under its own name (hostname-pid); names of gone processes are removed once
        # they hold nothing and have been idle this long, so the group does not grow with every restart.
        self.prune_idle_ms = max(claim_idle_ms * 10, 3_600_000)
        self._last_prune = 0.0

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run_once(self, *, block_ms: int | None = None) -> int:
        """One round: own pending entries (after a restart or a failed apply), then claimed ones, then new ones.
        Returns the number of entries applied and acked; an apply that fails leaves its entries pending."""
        try:
            return await self._round(block_ms)
        except BaseException:
            self._own_pending_done = False  # what we read but did not ack is retried first next round
            raise

    async def _round(self, block_ms: int | None) -> int:
        done = 0
        if not self._own_pending_done:
            entries = await self._read("0", block_ms=None)
            done += await self._handle(entries, "own_pending")
            if not entries:
                self._own_pending_done = True
        claimed = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, min_idle_time=self.claim_idle_ms, start_id="0-0", count=self.batch
        )
        done += await self._handle([e for e in claimed[1] if e and e[1]], "claimed")
        entries = await self._read(">", block_ms=self.block_ms if block_ms is None else block_ms)
        done += await self._handle(entries, "new")
        if time.monotonic() - self._last_prune > 60:
            self._last_prune = time.monotonic()
            await self.prune_consumers()
        return done

    async def prune_consumers(self) -> list[str]:
        """Delete consumers with no pending entries, idle longer than `prune_idle_ms`; returns their names."""
        gone = []
        for c in await self.redis.xinfo_consumers(self.stream, self.group):
            name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            if name != self.consumer and int(c["pending"]) == 0 and int(c["idle"]) > self.prune_idle_ms:
                await self.redis.xgroup_delconsumer(self.stream, self.group, name)
                gone.append(name)
        return gone

    async def _read(self, start: str, *, block_ms: int | None) -> list:
        reply = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: start}, count=self.batch, block=block_ms)
        if not reply:
            return []
        # RESP2: [[stream, [(id, fields), …]]]
        return [e for e in reply[0][1] if e[1]]

    async def _handle(self, entries: list, how: str) -> int:
        if not entries:
            return 0
        by_tenant: dict[str, list[tuple[bytes, Event]]] = {}
        dead: list[tuple[bytes, dict, str]] = []
        for entry_id, fields in entries:
            tenant = (fields.get(b"tenant") or b"").decode(errors="replace")
            try:
                if not valid_id(tenant):
                    raise ValueError(f"entry field `tenant` {tenant!r} is missing or not a valid id")
                event = Event.model_validate_json(fields.get(b"event") or b"")
            except ValidationError as exc:
                why = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in exc.errors())
                dead.append((entry_id, fields, f"invalid event: {why}"[:500]))
                continue
            except ValueError as exc:
                dead.append((entry_id, fields, str(exc)[:500]))
                continue
            by_tenant.setdefault(tenant, []).append((entry_id, event))
        acked = 0
        for tenant, items in by_tenant.items():
            await self.applier.apply(tenant, [ev for _, ev in items], source="stream")  # raises → not acked
            await self.redis.xack(self.stream, self.group, *[eid for eid, _ in items])
            acked += len(items)
            m.STREAM_ACKED.labels(how).inc(len(items))
        for entry_id, fields, error in dead:
            record = {k: v for k, v in fields.items()}
            record.update({b"error": error.encode(), b"source_id": entry_id})
            # In this order, one after the other: on a Cluster the two keys may be on two nodes, and an entry
            # must never be acked unless its dead-letter copy was written.
            await self.redis.xadd(self.dead_stream, record, maxlen=10_000, approximate=True)
            await self.redis.xack(self.stream, self.group, entry_id)
            m.STREAM_DEAD.inc()
            log.warning("stream entry %s cannot be applied, moved to %s: %s", entry_id, self.dead_stream, error)
        return acked

    async def run(self) -> None:
        """Forever, with backoff while Redis is down; nothing is acked that was not applied."""
        backoff = 0.1
        while True:
            try:
                await self.ensure_group()
                while True:
                    await self.run_once()
                    backoff = 0.1
            except (*REDIS_ERRORS, OSError, DependencyUnavailable) as exc:
                log.warning("events stream: %s: %s; retrying in %.1fs", type(exc).__name__, exc, backoff)
            except Exception:
                # A bug must not silently stop the consumer: log it, keep the entries pending, try again.
                log.exception("events stream: unexpected error; entries stay pending, retrying in %.1fs", backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"events-stream-{self.consumer}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
