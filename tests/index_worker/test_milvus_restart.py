"""Milvus Lite stopped (SIGTERM, as `hotpath loadtest` does) and restarted on the same port and data dir while a
steady stream of upserts, edits and deletes flows through a real worker: after the drain every message is at its
last version (count and content), nothing dead-lettered.

Why a prefilled collection: Milvus Lite opens a collection on its first request after a restart, replaying its
WAL; the bigger the WAL, the longer concurrent first requests race (see index_worker/store.py "Reopen gate")."""

from __future__ import annotations

import asyncio
import random

import pytest
from redis.asyncio import Redis

from index_worker.intake import enqueue_index_events
from index_worker.store import MessageRow
from taskkit import Inspector, Producer
from tests.index_worker.harness import (
    DIM,
    collection_name,
    queue_idle,
    rows,
    store_for,
    until,
    worker_env,
    workers,
)
from tests.index_worker.test_pipeline import A, up

FILLER = "filler"  # another tenant's rows: a WAL long enough that reopening the collection takes a while


@pytest.fixture
async def redis(redis_url):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


class Stream:
    """Events at a steady rate: new messages, edits (next version) and deletes of earlier ones; `last` is the
    newest event of each message, which is what the index must hold in the end."""

    def __init__(self, producer: Producer, seed: int = 7) -> None:
        self.producer = producer
        self.rng = random.Random(seed)
        self.last: dict[str, dict] = {}
        self.sent = 0
        self.halt = asyncio.Event()

    def _event(self) -> dict:
        known = list(self.last)
        roll = self.rng.random()
        if not known or roll < 0.5:
            mid = f"m{len(known)}"
            return up(mid, 1, f"{mid} v1")
        mid = self.rng.choice(known)
        version = self.last[mid]["version"] + 1
        if roll < 0.85:
            return up(mid, version, f"{mid} v{version}")
        return {"op": "delete", "message_id": mid, "version": version}

    async def run(self, per_tick: int = 6, tick_s: float = 0.1) -> None:
        while not self.halt.is_set():
            batch: list[dict] = []
            for _ in range(per_tick):
                ev = self._event()
                if ev["message_id"] in {e["message_id"] for e in batch}:
                    continue  # one event per message per request: the request's order is not the delivery order
                batch.append(ev)
                self.last[ev["message_id"]] = ev
            await enqueue_index_events(self.producer, A, batch, backpressure=False)
            self.sent += len(batch)
            await asyncio.sleep(tick_s)


async def test_milvus_restarted_under_a_stream_of_edits_keeps_the_last_version_of_every_message(
        own_milvus, redis, redis_url, key_prefix, tmp_path):
    collection = collection_name()
    env = worker_env(redis_url, key_prefix, own_milvus.uri, collection, HOTPATH_INDEX_BACKOFF_CAP_S="2")
    store = store_for(own_milvus.uri, collection, timeout_s=5)
    try:
        await store.ensure_collection()
        filler = [MessageRow(FILLER, "r", f"f{i}", "u", "filler", 0, 1, "x", [1.0] * DIM) for i in range(20_000)]
        await store.upsert(filler)
        stream = Stream(Producer(redis, prefix=key_prefix))
        async with workers(1, env, tmp_path) as [worker]:
            feeding = asyncio.create_task(stream.run())
            try:
                await asyncio.sleep(3)
                await asyncio.to_thread(own_milvus.stop)  # SIGTERM, then wait for the exit
                down_at = stream.sent
                await asyncio.sleep(4)
                await asyncio.to_thread(own_milvus.start)  # same port and data dir
                back_at = stream.sent
                await asyncio.sleep(4)
            finally:
                stream.halt.set()
                await feeding
            assert down_at < back_at < stream.sent  # events arrived before, during and after the outage
            await until(lambda: queue_idle(redis, key_prefix), 60, "every job done after the restart")
            assert await Inspector(redis, prefix=key_prefix).count("dead") == 0
        live = {mid: ev for mid, ev in stream.last.items() if ev["op"] == "upsert"}
        deleted = [mid for mid, ev in stream.last.items() if ev["op"] == "delete"]
        assert deleted and any(ev["version"] >= 3 for ev in live.values())  # the stream edited and deleted
        got = await rows(store, A, list(stream.last))
        wrong = {}
        for mid, ev in stream.last.items():
            have = got.get(mid)
            want = (ev["version"], ev["text"]) if ev["op"] == "upsert" else None
            if (None if have is None else (have["version"], have["text"])) != want:
                wrong[mid] = {"found": None if have is None else have["version"], "want": want}
        assert not wrong, f"{len(wrong)} of {len(stream.last)} messages not at their last version: {dict(list(wrong.items())[:8])}"
        assert await store.count(A) == len(live)
        assert "Traceback" not in worker.text()
    finally:
        try:
            await store.drop_collection()
        finally:
            await store.close()
