"""One batch of message events through the version guard, the embedder and Milvus: the worker's core.

Why one composition here: the worker's batcher, the benchmarks and the tests all apply events the same way
(validate → claim → embed → write → confirm), so the fencing order cannot differ between them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from index_worker import metrics
from index_worker.embed import Embedder, embed_missing, vector_problem
from index_worker.guard import VersionGuard
from index_worker.milvus_errors import MilvusPermanent, MilvusTransient
from index_worker.store import MessageRow, MilvusStore, message_pk, row_problem

OPS = ("upsert", "delete", "delete_room")


@dataclass(frozen=True)
class IndexEvent:
    """A message event as a job carries it (created_at in epoch ms; `vector` optional, precomputed)."""

    op: str
    tenant_id: str
    room_id: str = ""
    message_id: str = ""
    version: int = 0
    text: str = ""
    sender: str = ""
    created_at: int = 0
    vector: tuple[float, ...] | None = None


@dataclass
class BatchResult:
    """Per-event outcome of one batch: written, dropped as stale, to retry (busy), or rejected with a reason."""

    upserted: list[IndexEvent] = field(default_factory=list)
    deleted: list[IndexEvent] = field(default_factory=list)
    rooms_deleted: list[IndexEvent] = field(default_factory=list)
    stale: list[IndexEvent] = field(default_factory=list)
    busy: list[IndexEvent] = field(default_factory=list)
    retry_after_s: float = 0.0
    rejected: list[tuple[IndexEvent, str]] = field(default_factory=list)
    lost: list[IndexEvent] = field(default_factory=list)  # wrote after its lease expired (see guard.py)


def event_problem(ev: IndexEvent, store: MilvusStore) -> str | None:
    """Why `ev` can never be indexed (a permanent, per-event reason), or None."""
    if ev.op not in OPS:
        return f"unknown op {ev.op!r}: use one of {', '.join(OPS)}"
    if ev.op == "delete_room":
        probe = MessageRow(ev.tenant_id, ev.room_id, "-", "-", "", 0, 0, "-", [0.0] * store.dim)
        return row_problem(probe, store.dim, store.text_max_bytes)
    if ev.op == "delete":
        probe = MessageRow(ev.tenant_id, "-", ev.message_id, "-", "", 0, ev.version, "-", [0.0] * store.dim)
        return row_problem(probe, store.dim, store.text_max_bytes)
    vector = list(ev.vector) if ev.vector is not None else [0.0] * store.dim
    row = MessageRow(ev.tenant_id, ev.room_id, ev.message_id, ev.sender, ev.text, ev.created_at, ev.version, "-", vector)
    problem = row_problem(row, store.dim, store.text_max_bytes)
    if problem is None and ev.vector is not None:
        problem = vector_problem(list(ev.vector), store.dim)
    return problem


def _surely_not_sent(exc: BaseException) -> bool:
    # pymilvus code 2 "Fail connecting to server", or the store's reopen gate: the request never left; anything
    # else (a timeout above all) may still be applied by the server, so its leases are kept until they expire.
    return isinstance(exc, MilvusPermanent) or (
        isinstance(exc, MilvusTransient) and (exc.code == 2 or getattr(exc, "not_sent", False)))


class Indexer:
    """Applies batches of IndexEvents: the final Milvus state is the newest version of each live message."""

    def __init__(
        self,
        guard: VersionGuard,
        store: MilvusStore,
        embedder: Embedder,
        *,
        embed_batch_size: int = 64,
        before_write: Callable[[list[IndexEvent]], Awaitable[None]] | None = None,
    ) -> None:
        if embedder.dim != store.dim:
            raise ValueError(
                f"embedder {embedder.name} makes {embedder.dim}-d vectors, the store expects {store.dim} "
                f"(build the store with dim=embedder.dim; HOTPATH_EMBEDDER_DIM for http)"
            )
        if guard.lease_ms / 1000 < 3 * store.max_call_s:
            raise ValueError(
                f"the guard's lease ({guard.lease_ms / 1000:.0f} s) must outlast a batch's Milvus writes: make it at "
                f"least 3 × {store.max_call_s:.0f} s (HOTPATH_INDEX_LEASE_TTL_S vs HOTPATH_MILVUS_TIMEOUT_S)"
            )
        self.guard = guard
        self.store = store
        self.embedder = embedder
        self.embed_batch_size = embed_batch_size
        self._before_write = before_write  # a test hook: runs between claim and write

    async def apply(self, events: Sequence[IndexEvent]) -> BatchResult:
        """Validate, claim, embed, write and confirm one batch. Raises the store's or the embedder's error
        (transient or permanent) for the batch as a whole; per-event problems are in `rejected`."""
        metrics.BATCH_EVENTS.observe(len(events))
        result = await self._apply(events)
        for outcome, evs in (("indexed", result.upserted), ("deleted", result.deleted),
                             ("room_deleted", result.rooms_deleted), ("stale", result.stale),
                             ("rejected", result.rejected), ("busy", result.busy), ("lost", result.lost)):
            if evs:
                metrics.EVENTS.labels(outcome).inc(len(evs))
        return result

    async def _apply(self, events: Sequence[IndexEvent]) -> BatchResult:
        result = BatchResult()
        valid: list[IndexEvent] = []
        for ev in events:
            problem = event_problem(ev, self.store)
            if problem:
                result.rejected.append((ev, problem))
            else:
                valid.append(ev)
        room_deletes = [e for e in valid if e.op == "delete_room"]
        if room_deletes:  # tombstone first, then delete: see guard.py "Rooms"
            await self.guard.delete_rooms([(e.tenant_id, e.room_id) for e in room_deletes])
            for ev in room_deletes:
                await self.store.delete_room(ev.tenant_id, ev.room_id)
                result.rooms_deleted.append(ev)
        gone = await self.guard.deleted_rooms([(e.tenant_id, e.room_id) for e in valid if e.op == "upsert"])
        in_gone_room = [e for e in valid if e.op == "upsert" and (e.tenant_id, e.room_id) in gone]
        dropped = {id(e) for e in in_gone_room}
        claim = await self.guard.claim([e for e in valid if e.op != "delete_room" and id(e) not in dropped])
        result.stale = in_gone_room + claim.stale
        result.busy, result.retry_after_s = claim.busy, claim.retry_after_s
        if not claim.go:
            return result
        upserts = [e for e in claim.go if e.op == "upsert"]
        deletes = [e for e in claim.go if e.op == "delete"]
        sending = False
        try:
            rows = await self._rows(upserts)
            if self._before_write is not None:
                await self._before_write(claim.go)
            sending = True
            if rows:
                await self.store.upsert(rows)
            if deletes:
                await self.store.delete([message_pk(e.tenant_id, e.message_id) for e in deletes])
        except BaseException as exc:
            if not sending or _surely_not_sent(exc):
                await self.guard.release(claim)  # embedding failed, or Milvus never got the request
            raise
        confirmed = await self.guard.confirm(claim)
        result.lost = confirmed.lost
        result.deleted = deletes
        # The re-check that fences a room deleted while we wrote: our rows of such a room are removed again.
        gone = await self.guard.deleted_rooms([(e.tenant_id, e.room_id) for e in upserts])
        late = [e for e in upserts if (e.tenant_id, e.room_id) in gone]
        if late:
            await self.store.delete([message_pk(e.tenant_id, e.message_id) for e in late])
            result.stale += late
        result.upserted = [e for e in upserts if (e.tenant_id, e.room_id) not in gone]
        return result

    async def _rows(self, upserts: list[IndexEvent]) -> list[MessageRow]:
        if not upserts:
            return []
        started = time.perf_counter()
        vectors, models = await embed_missing(
            self.embedder, [e.text for e in upserts], [e.vector for e in upserts], batch_size=self.embed_batch_size
        )
        embedded = sum(1 for e in upserts if e.vector is None)
        if embedded:
            metrics.EMBED_SECONDS.labels(self.embedder.name).observe(time.perf_counter() - started)
            metrics.EMBED_TEXTS.labels(self.embedder.name).inc(embedded)
        return [
            MessageRow(e.tenant_id, e.room_id, e.message_id, e.sender, e.text, e.created_at, e.version, model, vec)
            for e, vec, model in zip(upserts, vectors, models, strict=True)
        ]
