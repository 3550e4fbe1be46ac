"""Backfill: enqueue every message of the SQL origin's `messages` table (one tenant, optionally one room) for the
index, as version-0 upserts, resumable from a checkpoint in Redis and waiting whenever the `index` queue is full.

Why version 0 and the guard's `known` check: any real event (version ≥ 1, or a delete) beats a backfilled row,
and a message the guard already knows — indexed, being written, or tombstoned — is not enqueued at all, so a
backfill never resurrects a deletion nor undoes an edit (a real event racing the backfill is still ordered by the
guard in the worker). Why keyset pages on the primary key (room_id, seq): each page is one index range scan,
and the checkpoint is simply the last (room, seq) enqueued — saved only after its page is enqueued, so an
interrupted run repeats at most one page, whose events are then duplicates (idempotency keys) or known.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from index_worker.config import QUEUE
from index_worker.guard import VersionGuard
from index_worker.intake import ID_PATTERN, MAX_EVENTS, enqueue_index_events, wire_model
from taskkit.errors import QueueFull
from taskkit.producer import Producer

CHECKPOINT_TTL_S = 30 * 86400  # an abandoned backfill's checkpoint is forgotten after 30 days (refreshed per page)
QUERY_TIMEOUT_S = 60.0
_FIRST = ("", -(2**62))  # before every (room_id, seq)

_COLUMNS = "room_id, seq, message_id, sender_id, text, created_at"
_Q_TENANT = text(f"SELECT {_COLUMNS} FROM messages WHERE tenant_id = :t AND (room_id, seq) > (:r, :s) "
                 "ORDER BY room_id, seq LIMIT :n")
_Q_ROOM = text(f"SELECT {_COLUMNS} FROM messages WHERE tenant_id = :t AND room_id = :r AND seq > :s "
               "ORDER BY seq LIMIT :n")
_C_TENANT = text("SELECT COUNT(*) FROM messages WHERE tenant_id = :t AND (room_id, seq) > (:r, :s)")
_C_ROOM = text("SELECT COUNT(*) FROM messages WHERE tenant_id = :t AND room_id = :r AND seq > :s")


class SqlOriginRequired(ValueError):
    """The origin is not a SQL database (an HTTP origin has no `messages` table to read)."""


def messages_engine(url: str, *, timeout_s: float = QUERY_TIMEOUT_S) -> AsyncEngine:
    """An engine on the SQL origin at `url` (HOTPATH_ORIGIN_URL: `postgresql+asyncpg://…[?schema=s]` or
    `sqlite+aiosqlite:///…`), one connection, every statement bounded by `timeout_s`."""
    if url.strip().startswith(("http://", "https://")):
        raise SqlOriginRequired(
            "backfill reads the SQL origin's messages table, but HOTPATH_ORIGIN_URL is an HTTP origin "
            f"({url.split(',')[0].strip()}); set HOTPATH_ORIGIN_URL to the database (postgresql+asyncpg://… or "
            "sqlite+aiosqlite:///…) for this command")
    u = make_url(url)
    schema = u.query.get("schema")
    schema = schema[-1] if isinstance(schema, tuple) else schema
    u = u.difference_update_query(["schema"])
    if u.drivername == "postgresql+asyncpg":
        server_settings = {"statement_timeout": str(int(timeout_s * 1000)), "application_name": "hotpath-backfill"}
        if schema:
            server_settings["search_path"] = schema
        return create_async_engine(u, pool_size=1, max_overflow=0, connect_args={
            "timeout": timeout_s, "command_timeout": timeout_s, "server_settings": server_settings})
    if u.drivername == "sqlite+aiosqlite":
        if schema:
            raise ValueError("HOTPATH_ORIGIN_URL: `schema=` applies to PostgreSQL only")
        return create_async_engine(u, pool_size=1, max_overflow=0, connect_args={"timeout": timeout_s})
    raise ValueError(f"HOTPATH_ORIGIN_URL: unsupported SQL driver {u.drivername!r}; use postgresql+asyncpg:// "
                     "or sqlite+aiosqlite://")


def _aware(value: Any) -> datetime:
    """created_at comes back as an aware datetime (PostgreSQL) or naive text (SQLite, stored as UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Row:
    room_id: str
    seq: int
    message_id: str
    sender: str
    text: str
    created_at: datetime


class MessagesTable:
    """The origin's `messages` of one tenant (and room), read in keyset pages of the primary key."""

    def __init__(self, engine: AsyncEngine, tenant: str, room: str | None = None) -> None:
        self.engine = engine
        self.tenant = tenant
        self.room = room

    def _params(self, after: tuple[str, int]) -> dict[str, Any]:
        if self.room is not None:
            return {"t": self.tenant, "r": self.room, "s": after[1] if after[0] == self.room else _FIRST[1]}
        return {"t": self.tenant, "r": after[0], "s": after[1]}

    async def count_after(self, after: tuple[str, int] = _FIRST) -> int:
        async with self.engine.connect() as conn:
            stmt = _C_ROOM if self.room is not None else _C_TENANT
            return int((await conn.execute(stmt, self._params(after))).scalar_one())

    async def pages(self, after: tuple[str, int], size: int) -> AsyncIterator[list[Row]]:
        """Pages of at most `size` rows after (room_id, seq) `after`, in primary-key order."""
        stmt = _Q_ROOM if self.room is not None else _Q_TENANT
        while True:
            async with self.engine.connect() as conn:
                got = (await conn.execute(stmt, {**self._params(after), "n": size})).all()
            if not got:
                return
            page = [Row(str(r[0]), int(r[1]), str(r[2]), str(r[3]), r[4] or "", _aware(r[5])) for r in got]
            yield page
            after = (page[-1].room_id, page[-1].seq)


class Checkpoint:
    """Where a backfill of (tenant, room or every room) got to: a Redis hash under the taskkit prefix."""

    def __init__(self, redis: Any, prefix: str, tenant: str, room: str | None) -> None:
        self.redis = redis
        self.key = f"{prefix}ix:backfill:{tenant}/{room if room is not None else '*'}"  # no id contains '/'

    async def load(self) -> dict[str, str]:
        raw = await self.redis.hgetall(self.key)
        return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in raw.items()}

    async def save(self, last: Row, stats: BackfillStats, *, done: bool = False) -> None:
        fields = {"room_id": last.room_id, "seq": last.seq, "message_id": last.message_id,
                  "read": stats.read + stats.resumed_read, "enqueued": stats.enqueued + stats.resumed_enqueued,
                  "updated_at": datetime.now(UTC).isoformat(timespec="seconds"), "done": int(done)}
        async with self.redis.pipeline(transaction=True) as p:
            p.hset(self.key, mapping=fields)
            p.expire(self.key, CHECKPOINT_TTL_S)
            await p.execute()

    async def finish(self) -> None:
        await self.redis.hset(self.key, mapping={"done": 1, "updated_at": datetime.now(UTC).isoformat(timespec="seconds")})

    async def clear(self) -> None:
        await self.redis.delete(self.key)


@dataclass
class BackfillStats:
    """What a backfill saw and did in this run (the progress callback gets it after each page and each wait)."""

    total: int = 0  # messages left to read when this run started (for the progress bar)
    read: int = 0  # rows read from the origin
    enqueued: int = 0  # upsert jobs created
    duplicates: int = 0  # not created: the same event is queued or was just done
    known: int = 0  # skipped: the guard knows the message (indexed, being written or deleted)
    room_deleted: int = 0  # skipped: its room was deleted (delete_room)
    invalid: int = 0  # skipped: the row cannot be an index event (empty text, too long, bad id)
    reasons: dict[str, int] = field(default_factory=dict)  # invalid rows by reason
    waits: int = 0  # times the queue was full and the backfill waited
    waited_s: float = 0.0
    waiting: bool = False  # waiting on a full queue right now
    retry_after_s: float = 0.0  # the wait in progress
    resumed_from: tuple[str, str] | None = None  # (room, message id) of the checkpoint this run resumed after
    resumed_read: int = 0  # what the earlier runs had read / enqueued
    resumed_enqueued: int = 0
    already_done: bool = False  # the checkpoint says a previous run finished: nothing was read


def _reason(err: dict[str, Any]) -> str:
    # loc is ("events", i, "upsert", field): the union's tag says nothing a reader needs
    where = ".".join(str(p) for p in err.get("loc", ())[3:]) or "event"
    return f"{where}: {err['msg'].removeprefix('Value error, ')}"


def _split_valid(tenant: str, rows: list[Row], text_max_bytes: int) -> tuple[list[tuple[Row, dict]], dict[int, str]]:
    """The page's rows as wire events, minus those the intake would refuse (index → reason)."""
    events = [{"op": "upsert", "room_id": r.room_id, "message_id": r.message_id, "version": 0, "text": r.text,
               "sender": r.sender, "created_at": r.created_at} for r in rows]
    bad: dict[int, str] = {}
    try:
        wire_model(text_max_bytes, None).model_validate({"events": events})
    except ValidationError as exc:
        for err in exc.errors():
            loc = err.get("loc", ())
            if len(loc) > 1 and loc[0] == "events" and isinstance(loc[1], int):
                bad.setdefault(loc[1], _reason(err))
            else:
                raise
    return [(r, e) for i, (r, e) in enumerate(zip(rows, events, strict=True)) if i not in bad], bad


async def backfill(engine: AsyncEngine, producer: Producer, guard: VersionGuard, tenant: str, *,
                   room: str | None = None, restart: bool = False, batch: int = MAX_EVENTS,
                   text_max_bytes: int = 8192, progress: Callable[[BackfillStats], None] | None = None,
                   sleep: Callable[[float], Any] = asyncio.sleep) -> BackfillStats:
    """Enqueue the origin's messages of `tenant` (and `room`) not yet known to the guard, as version-0 upserts.

    Pages of at most `batch` events (≤ 1,000, and at most the queue's high − low watermark so a page always fits
    once the queue reopens), one `enqueue_index_events` call each. QueueFull → wait its retry_after and send the
    same page again: backpressure never fails a backfill. The checkpoint (guard.prefix + `backfill:…`) resumes a
    rerun after the last page enqueued; `restart` forgets it. A finished backfill is not run again without
    `restart` (`already_done`). Rows the intake would refuse are skipped and counted by reason. Origin (SQLAlchemy)
    and Redis errors propagate."""
    if not re.fullmatch(ID_PATTERN, tenant) or (room is not None and not re.fullmatch(ID_PATTERN, room)):
        raise ValueError(f"tenant and room must match {ID_PATTERN}")
    wm = producer.watermarks(QUEUE)
    size = max(1, min(batch, MAX_EVENTS, wm.high - wm.low))
    table = MessagesTable(engine, tenant, room)
    checkpoint = Checkpoint(guard.redis, guard.prefix, tenant, room)
    stats = BackfillStats()
    after = _FIRST
    if restart:
        await checkpoint.clear()
    else:
        saved = await checkpoint.load()
        if saved:
            stats.resumed_from = (saved["room_id"], saved["message_id"])
            stats.resumed_read, stats.resumed_enqueued = int(saved.get("read", 0)), int(saved.get("enqueued", 0))
            if saved.get("done") == "1":
                stats.already_done = True
                return stats
            after = (saved["room_id"], int(saved["seq"]))
    stats.total = await table.count_after(after)
    if progress:
        progress(stats)
    last: Row | None = None
    async for rows in table.pages(after, size):
        stats.read += len(rows)
        valid, bad = _split_valid(tenant, rows, text_max_bytes)
        stats.invalid += len(bad)
        for reason in bad.values():
            stats.reasons[reason] = stats.reasons.get(reason, 0) + 1
        known = await guard.known([(tenant, r.message_id) for r, _ in valid])
        todo = [(r, e) for (r, e), k in zip(valid, known, strict=True) if not k]
        stats.known += len(valid) - len(todo)
        gone = await guard.deleted_rooms([(tenant, r.room_id) for r, _ in todo])
        events = [e for r, e in todo if (tenant, r.room_id) not in gone]
        stats.room_deleted += len(todo) - len(events)
        await _enqueue(producer, tenant, events, text_max_bytes, stats, progress, sleep)
        last = rows[-1]
        await checkpoint.save(last, stats)
        if progress:
            progress(stats)
    if last is not None:
        await checkpoint.save(last, stats, done=True)
    elif stats.resumed_from is not None:  # resumed right at the end: nothing was left
        await checkpoint.finish()
    return stats


async def _enqueue(producer: Producer, tenant: str, events: list[dict], text_max_bytes: int, stats: BackfillStats,
                   progress: Callable[[BackfillStats], None] | None, sleep: Callable[[float], Any]) -> None:
    while events:
        try:
            out = await enqueue_index_events(producer, tenant, events, text_max_bytes=text_max_bytes)
        except QueueFull as exc:
            stats.waits += 1
            stats.waiting, stats.retry_after_s = True, exc.retry_after
            if progress:
                progress(stats)
            started = time.monotonic()
            await sleep(exc.retry_after)
            stats.waited_s += time.monotonic() - started
            continue
        stats.waiting, stats.retry_after_s = False, 0.0
        stats.enqueued += out.accepted
        stats.duplicates += out.duplicates
        return
