"""Issue 8, backfill: `hotpath index backfill` / index_worker.backfill against a real SQLite origin with the demo
data (and PostgreSQL), the real Redis and real `hotpath worker index` processes on Milvus Lite.

Every message enqueued and indexed at version 0; an interrupted run resumes from its checkpoint (at most one page
repeated, never a second job); a deleted message is not resurrected; a newer real version is not overwritten and
a real edit beats a backfilled row; a full queue makes it wait, not fail; rows the intake would refuse are
skipped with their reason; an HTTP origin is refused in one line naming HOTPATH_ORIGIN_URL.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from cacheman.origin.sql import init_schema
from index_worker.backfill import Checkpoint, SqlOriginRequired, backfill, messages_engine
from index_worker.guard import VersionGuard
from index_worker.intake import enqueue_index_events
from taskkit import Keys, Producer
from taskkit.backpressure import Watermarks
from tests.index_worker.harness import (
    BIN,
    collection_name,
    queue_idle,
    rows,
    store_for,
    until,
    worker_env,
    workers,
)

A = "acme"


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory) -> str:
    """A SQLite origin with the demo data (2 tenants, ~350 messages each), one per module (never written)."""
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('origin') / 'origin.db'}"
    asyncio.run(init_schema(url, demo=True))
    return url


async def messages_of(url: str, tenant: str, room: str | None = None) -> dict[str, tuple]:
    engine = messages_engine(url)
    where = "tenant_id = :t" + (" AND room_id = :r" if room else "")
    async with engine.connect() as conn:
        got = (await conn.execute(text(f"SELECT message_id, room_id, sender_id, text FROM messages WHERE {where}"),
                                  {"t": tenant, "r": room})).all()
    await engine.dispose()
    return {r[0]: tuple(r[1:]) for r in got}


@pytest.fixture
async def redis(redis_url):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def guard(redis, key_prefix) -> VersionGuard:
    return VersionGuard(redis, key_prefix + "ix:")  # the worker's guard prefix for HOTPATH_TASKKIT_PREFIX=key_prefix


@pytest.fixture
async def engine(demo_url):
    e = messages_engine(demo_url)
    yield e
    await e.dispose()


async def depth(redis, prefix: str) -> int:
    return await redis.zcard(Keys(prefix).arq_queue("index"))


@pytest.fixture
def collection():
    return collection_name()


@pytest.fixture
async def store(milvus_uri, collection):
    s = store_for(milvus_uri, collection)
    yield s
    try:
        await s.drop_collection()
    finally:
        await s.close()


async def test_every_message_indexed_deleted_not_resurrected_edit_kept(engine, demo_url, redis, guard, key_prefix,
                                                                      redis_url, milvus_uri, collection, store,
                                                                      tmp_path):
    want = await messages_of(demo_url, A)
    deleted, edited, later = sorted(want)[:3]
    producer = Producer(redis, prefix=key_prefix)
    env = worker_env(redis_url, key_prefix, milvus_uri, collection)
    async with workers(1, env, tmp_path):
        # Real events first: one message deleted, one edited to version 3.
        await enqueue_index_events(producer, A, [
            {"op": "delete", "message_id": deleted, "version": 1},
            {"op": "upsert", "room_id": want[edited][0], "message_id": edited, "version": 3, "text": "edited for real",
             "sender": "u1", "created_at": "2026-11-26T12:00:00Z"}])
        await until(lambda: queue_idle(redis, key_prefix), 60, "the real events indexed")

        stats = await backfill(engine, producer, guard, A, batch=100)
        assert (stats.read, stats.enqueued, stats.known, stats.invalid) == (len(want), len(want) - 2, 2, 0)
        await until(lambda: queue_idle(redis, key_prefix), 90, "the backfill indexed")
        assert await store.count(A) == len(want) - 1
        assert await store.count("globex") == 0
        got = await rows(store, A, list(want))
        assert deleted not in got
        assert (got[edited]["version"], got[edited]["text"]) == (3, "edited for real")
        backfilled = {m: (r["room_id"], r["sender"], r["text"]) for m, r in got.items() if m != edited}
        assert backfilled == {m: v for m, v in want.items() if m not in (deleted, edited)}
        assert {r["version"] for m, r in got.items() if m != edited} == {0}

        # Any real event beats a backfilled row: an edit at version 1 replaces it.
        await enqueue_index_events(producer, A, [
            {"op": "upsert", "room_id": want[later][0], "message_id": later, "version": 1, "text": "a real edit",
             "sender": "u2", "created_at": "2026-11-26T12:00:00Z"}])
        await until(lambda: queue_idle(redis, key_prefix), 30, "the edit indexed")
        assert (await rows(store, A, [later]))[later]["text"] == "a real edit"

        # A second backfill after --restart enqueues nothing: every message is known now.
        again = await backfill(engine, producer, guard, A, restart=True)
        assert (again.enqueued, again.known) == (0, len(want))
    assert (await rows(store, A, [later]))[later]["version"] == 1


async def test_an_interrupted_backfill_resumes_from_its_checkpoint(engine, demo_url, redis, guard, key_prefix):
    want = await messages_of(demo_url, A)
    producer = Producer(redis, prefix=key_prefix)

    class Interrupted(Exception):
        pass

    def stop_after_two_pages(s):
        if s.read >= 200:
            raise Interrupted

    with pytest.raises(Interrupted):
        await backfill(engine, producer, guard, A, batch=100, progress=stop_after_two_pages)
    assert await depth(redis, key_prefix) == 200
    saved = await Checkpoint(redis, guard.prefix, A, None).load()
    assert (saved["read"], saved["enqueued"], saved["done"]) == ("200", "200", "0")
    assert saved["message_id"] == sorted(want, key=lambda m: (want[m][0], m))[199]  # demo ids sort by room, seq

    # Killed between enqueueing page 3 and saving its checkpoint: the rerun repeats that page only, as duplicates.
    real_save = Checkpoint.save

    async def crash_on_first_save(self, last, stats, *, done=False):
        raise ConnectionError("killed before the checkpoint was written")

    Checkpoint.save = crash_on_first_save
    try:
        with pytest.raises(ConnectionError):
            await backfill(engine, producer, guard, A, batch=100)
    finally:
        Checkpoint.save = real_save
    assert await depth(redis, key_prefix) == 300

    stats = await backfill(engine, producer, guard, A, batch=100)
    assert stats.resumed_from == (saved["room_id"], saved["message_id"])
    assert (stats.read, stats.enqueued, stats.duplicates) == (len(want) - 200, len(want) - 300, 100)
    assert await depth(redis, key_prefix) == len(want)  # every message once, none twice
    done = await Checkpoint(redis, guard.prefix, A, None).load()
    # The crashed run's page counts as duplicates of the rerun, not as enqueued: its checkpoint was never written.
    assert (done["done"], done["read"], done["enqueued"]) == ("1", str(len(want)), str(len(want) - 100))

    # Finished: a rerun does nothing and says so; --restart reads everything again (all queued: duplicates).
    assert (await backfill(engine, producer, guard, A)).already_done
    again = await backfill(engine, producer, guard, A, restart=True)
    assert (again.read, again.enqueued, again.duplicates) == (len(want), 0, len(want))


async def test_a_full_queue_makes_it_wait_not_fail(engine, demo_url, redis, guard, key_prefix, redis_url, milvus_uri,
                                                   collection, store, tmp_path):
    want = await messages_of(demo_url, A)
    producer = Producer(redis, prefix=key_prefix, watermarks=Watermarks(high=100, low=50))
    env = worker_env(redis_url, key_prefix, milvus_uri, collection)
    started: list = []
    depths: list[int] = []
    seen: list = []

    async def sleep(seconds: float) -> None:  # the queue is full: now start a worker to drain it
        depths.append(await depth(redis, key_prefix))
        if not started:
            started.append(workers(1, env, tmp_path))
            await started[0].__aenter__()
        await asyncio.sleep(min(seconds, 0.5))

    def progress(s):
        seen.append((s.waiting, s.retry_after_s))

    try:
        stats = await backfill(engine, producer, guard, A, progress=progress, sleep=sleep)
        assert stats.enqueued == len(want) and stats.waits >= 1 and stats.waits == len(depths)
        assert any(waiting and ra >= 1 for waiting, ra in seen)  # the progress line is told it waits, and how long
        assert max(depths) <= 100 and depths[0] >= 50  # a page is at most high − low = 50, so depth stays bounded
        await until(lambda: queue_idle(redis, key_prefix), 90, "the backfill indexed")
        assert await store.count(A) == len(want)
    finally:
        if started:
            await started[0].__aexit__(None, None, None)


async def test_rows_the_intake_would_refuse_are_skipped_with_their_reason(tmp_path, redis, guard, key_prefix):
    url = f"sqlite+aiosqlite:///{tmp_path / 'small.db'}"
    await init_schema(url)
    db = create_async_engine(url)
    async with db.begin() as conn:
        for seq, (mid, body) in enumerate([("ok-1", "hello"), ("empty", ""), ("long", "x" * 300), ("bad id!", "hi"),
                                           ("ok-2", "world")], start=1):
            await conn.execute(text("INSERT INTO messages (tenant_id, room_id, seq, message_id, sender_id, text, "
                                    "created_at) VALUES ('acme', 'r1', :s, :m, 'u1', :x, '2026-01-02 03:04:05')"),
                               {"s": seq, "m": mid, "x": body})
    await db.dispose()
    engine = messages_engine(url)
    try:
        stats = await backfill(engine, Producer(redis, prefix=key_prefix), guard, A, room="r1", text_max_bytes=200)
    finally:
        await engine.dispose()
    assert (stats.read, stats.enqueued, stats.invalid) == (5, 2, 3)
    reasons = " | ".join(stats.reasons)
    assert "text: String should have at least 1 character" in reasons
    assert "text is 300 bytes in UTF-8; the index takes at most 200" in reasons
    assert "message_id: String should match pattern" in reasons


async def test_postgresql_origin_one_room(pg_url, pg_schema, redis, guard, key_prefix):
    url = f"{pg_url}?schema={pg_schema}"
    await init_schema(url, demo=True)
    want = await messages_of(url, "globex", "room-05")
    assert want, "the demo room has messages"
    engine = messages_engine(url)
    try:
        stats = await backfill(engine, Producer(redis, prefix=key_prefix), guard, "globex", room="room-05", batch=7)
        assert (stats.total, stats.read, stats.enqueued) == (len(want), len(want), len(want))
        assert await depth(redis, key_prefix) == len(want)
        # The room's checkpoint is its own: the whole tenant still starts from the beginning.
        whole = await backfill(engine, Producer(redis, prefix=key_prefix), guard, "globex")
        assert whole.resumed_from is None and whole.duplicates == len(want)
    finally:
        await engine.dispose()


def test_the_cli_backfills_and_refuses_an_http_origin(demo_url, redis_url, key_prefix):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTPATH_")}
    env.update(HOTPATH_REDIS_URL=redis_url, HOTPATH_TASKKIT_PREFIX=key_prefix, HOTPATH_ORIGIN_URL=demo_url)
    hotpath = str(Path(BIN) / "hotpath")
    run = subprocess.run([hotpath, "index", "backfill", "--tenant", "globex", "--room", "room-02"], env=env,
                         capture_output=True, text=True, timeout=60)
    n = len(asyncio.run(messages_of(demo_url, "globex", "room-02")))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"{n} messages read, {n} enqueued, 0 already indexed or deleted"), run.stdout
    rerun = subprocess.run([hotpath, "index", "backfill", "--tenant", "globex", "--room", "room-02"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0 and rerun.stdout.startswith("already done"), rerun.stdout

    env["HOTPATH_ORIGIN_URL"] = "http://dbman1:8080,http://dbman2:8080"
    http = subprocess.run([hotpath, "index", "backfill", "--tenant", "globex"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert http.returncode == 2 and http.stdout == ""
    lines = http.stderr.strip().splitlines()
    assert len(lines) == 1 and "HOTPATH_ORIGIN_URL" in lines[0] and "SQL origin" in lines[0], http.stderr
    with pytest.raises(SqlOriginRequired):
        messages_engine("https://dbman")
