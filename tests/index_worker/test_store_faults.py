"""Milvus faults on a private Milvus Lite server (killed/stopped by the test only): down → transient,
restart → the NotLoad collection is reloaded, hung (SIGSTOP) → calls time out within the bound → transient."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from index_worker.embed.hashing import HashEmbedder
from index_worker.indexer import Indexer, IndexEvent
from index_worker.milvus_errors import MilvusTransient
from index_worker.store import MessageRow, MilvusStore, message_pk

DIM = 16


def load_state(uri: str, collection: str) -> str:
    """The collection's load state seen by a fresh client (retried through gRPC's reconnect window)."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    deadline = time.monotonic() + 15
    while True:
        try:
            client = MilvusClient(uri=uri, timeout=5)
            try:
                return client.get_load_state(collection, timeout=5)["state"].name
            finally:
                client.close()
        except MilvusException as exc:
            if exc.code != 2 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


async def eventually(call, deadline_s: float = 15.0):
    """Retry a store call on transient errors until it answers (what the task's retry would do)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return await call()
        except MilvusTransient:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def rows(n: int, version: int = 1) -> list[MessageRow]:
    e = HashEmbedder(DIM)
    return [MessageRow("t", "r", f"m{i}", "u", f"message {i}", 0, version, "hash@1", e.embed_one(f"message {i}"))
            for i in range(n)]


async def test_down_is_transient_and_restart_reloads_the_collection(own_milvus):
    store = MilvusStore(own_milvus.uri, collection="faults", dim=DIM, timeout_s=3)
    try:
        await store.ensure_collection()
        await store.upsert(rows(5))
        own_milvus.stop()
        t0 = time.monotonic()
        with pytest.raises(MilvusTransient):
            await store.upsert(rows(5, version=2))
        assert time.monotonic() - t0 < 3 * 2 + 1
        own_milvus.start()  # same data dir, same port: the collection is there but NotLoad
        assert load_state(own_milvus.uri, "faults") == "NotLoad"
        # a read on a NotLoad collection fails with code 101; the store loads it and answers (the first calls
        # may still meet gRPC's reconnect backoff: transient, as a worker's retry would)
        assert await eventually(lambda: store.count("t")) == 5
        assert load_state(own_milvus.uri, "faults") == "Loaded"
        assert (await store.search("t", rows(1)[0].vector, limit=1))[0].message_id == "m0"
        await store.upsert(rows(5, version=2))
        assert {r["version"] for r in await store.get([message_pk("t", f"m{i}") for i in range(5)])} == {2}
        await store.ensure_collection()  # idempotent after a restart too
    finally:
        await store.close()


async def test_hung_server_times_out_within_the_bound(own_milvus, guard):
    store = MilvusStore(own_milvus.uri, collection="hung", dim=DIM, timeout_s=1.5)
    try:
        await store.ensure_collection()
        indexer = Indexer(guard, store, HashEmbedder(DIM))
        os.kill(own_milvus.proc.pid, signal.SIGSTOP)
        # through the indexer: the write's outcome is unknown (it may still land), so its lease is kept and
        # another writer of the message waits for it instead of racing a late write
        t0 = time.monotonic()
        with pytest.raises(MilvusTransient, match=r"upsert failed.*(DEADLINE_EXCEEDED|timeout|Timeout)"):
            await indexer.apply([IndexEvent("upsert", "t", "r", "m9", 1, "late", "u", 0)])
        assert time.monotonic() - t0 < 1.5 * 2 + 1.5
        assert (await guard.claim([IndexEvent("upsert", "t", "r", "m9", 2, "newer", "u", 0)])).busy
        # after that failure every call waits for the reopen gate's probe, which times out too: bounded, and the
        # gated request never left, so the indexer releases its lease
        for call in (lambda: store.upsert(rows(3)), lambda: store.count("t")):
            t0 = time.monotonic()
            with pytest.raises(MilvusTransient, match=r"not sent.*DEADLINE_EXCEEDED") as raised:
                await call()
            assert raised.value.not_sent
            assert time.monotonic() - t0 < 1.5 * 2 + 1.5
        with pytest.raises(MilvusTransient, match="not sent"):
            await indexer.apply([IndexEvent("upsert", "t", "r", "m10", 1, "gated", "u", 0)])
        assert not (await guard.claim([IndexEvent("upsert", "t", "r", "m10", 2, "newer", "u", 0)])).busy
        os.kill(own_milvus.proc.pid, signal.SIGCONT)
        await eventually(lambda: store.upsert(rows(3)))
        assert await eventually(lambda: store.count("t")) == 3
    finally:
        await store.close()


async def test_restart_while_idle_then_concurrent_first_writes_all_land(own_milvus):
    # Milvus Lite opens a collection on its first request after a restart, unlocked: concurrent first requests
    # each open it and the writes of all but the last one opened are acknowledged, then lost. No call failed
    # here (the store was idle through the restart): the silence alone must send the first call through the gate.
    store = MilvusStore(own_milvus.uri, collection="reopen", dim=DIM, timeout_s=10)
    try:
        await store.ensure_collection()
        await store.upsert([MessageRow("filler", "r", f"f{i}", "u", "x", 0, 1, "m", [1.0] * DIM)
                            for i in range(20_000)])  # a WAL long enough that reopening takes a while
        own_milvus.stop()  # SIGTERM, as `hotpath loadtest` does
        own_milvus.start()
        batches = [[MessageRow("t", "r", f"w{k}-{j}", "u", "x", 0, 1, "m", [1.0] * DIM) for j in range(10)]
                   for k in range(8)]
        await eventually(lambda: asyncio.gather(*(store.upsert(b) for b in batches)))
        assert await eventually(lambda: store.count("t")) == 80
    finally:
        await store.close()


async def test_reads_right_after_a_restart_answer_without_the_callers_retry(own_milvus):
    # The first calls after a restart (or after Milvus Lite's GOAWAY on an idle channel) fail with code 2 while
    # gRPC reconnects; an idempotent read is sent again by the store itself, so a search or a count answers.
    store = MilvusStore(own_milvus.uri, collection="reads", dim=DIM, timeout_s=3)
    try:
        await store.ensure_collection()
        await store.upsert(rows(5))
        own_milvus.stop()
        own_milvus.start()
        assert await store.count("t") == 5  # no `eventually`: the store's own read retry
        assert (await store.search("t", rows(1)[0].vector, limit=1))[0].message_id == "m0"
        assert len(await store.get([message_pk("t", f"m{i}") for i in range(5)])) == 5
    finally:
        await store.close()
