"""Guard + embedder + Milvus together against real Redis and Milvus Lite: replays in any order and on two
processes converge on the last version of each live message; the v3/v4 race; poison events isolated."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from index_worker.embed.hashing import HashEmbedder
from index_worker.indexer import Indexer, IndexEvent
from index_worker.store import MessageRow, message_pk
from tests.index_worker.conftest import DIM
from tests.index_worker.replay import apply_all, event_log, shuffled_with_duplicates, to_json

ROOT = Path(__file__).resolve().parents[2]


def up(mid: str, version: int, tenant: str = "t1", **kw) -> IndexEvent:
    return IndexEvent("upsert", tenant, "r1", mid, version, f"text of {mid} v{version}", "u1", 1_700_000_000_000, **kw)


async def assert_exactly(store, final: dict[tuple[str, str], IndexEvent], tenants: list[str]) -> None:
    assert await store.count() == len(final)
    for tenant in tenants:
        want = {mid: ev for (t, mid), ev in final.items() if t == tenant}
        rows = await store.get([message_pk(tenant, m) for m in want]) if want else []
        assert {r["message_id"]: (r["version"], r["text"]) for r in rows} == {
            m: (ev.version, ev.text) for m, ev in want.items()
        }
        assert await store.count(tenant) == len(want)


async def test_upsert_edit_delete_through_the_guard(store, guard, embedder):
    ix = Indexer(guard, store, embedder)
    assert (await ix.apply([up("m1", 1), up("m2", 1)])).upserted == [up("m1", 1), up("m2", 1)]
    await ix.apply([up("m1", 2)])
    assert (await ix.apply([up("m1", 1)])).stale == [up("m1", 1)]  # an older edit arriving late
    await ix.apply([IndexEvent("delete", "t1", message_id="m2", version=2)])
    assert (await ix.apply([up("m2", 1), up("m2", 2)])).stale  # upserts older than / equal to the delete
    rows = await store.get([message_pk("t1", "m1"), message_pk("t1", "m2")])
    assert [(r["message_id"], r["version"], r["model"]) for r in rows] == [("m1", 2, "hash@1")]


async def test_shuffled_duplicated_log_on_two_concurrent_indexers(store, guard, embedder):
    tenants = ["acme", "globex"]  # the same message ids in both tenants
    log, final = event_log(tenants, messages=40, seed=7)
    events = shuffled_with_duplicates(log, seed=8)
    a, b = Indexer(guard, store, embedder), Indexer(guard, store, embedder)
    retries = await asyncio.gather(apply_all(a, events, 16, seed=1), apply_all(b, list(reversed(events)), 16, seed=2))
    print("busy retries", retries)
    await assert_exactly(store, final, tenants)
    hits = await store.search("acme", embedder.embed_one("acme message 3"), limit=50)
    assert hits and all(h.tenant_id == "acme" for h in hits)


async def test_replay_on_two_processes(store, guard, redis_url, milvus_uri, tmp_path):
    log, final = event_log(["p1", "p2"], messages=30, seed=11)
    procs = []
    for seed in (21, 22):
        path = tmp_path / f"log{seed}.json"
        path.write_text(to_json(shuffled_with_duplicates(log, seed)))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.index_worker.replay", str(path), redis_url, guard.prefix, milvus_uri,
             store.collection, str(DIM), str(seed)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ))
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.startswith(b"done"), err.decode()[-2000:]
    await assert_exactly(store, final, ["p1", "p2"])


@pytest.mark.parametrize("first", [3, 4])
async def test_v3_and_v4_written_at_once_v4_wins(store, guard, embedder, first):
    """Two writers of one message: the first one claims, then stalls before its Milvus write (the injected
    delay); the other arrives during the stall. Whichever comes first, the final row is v4."""
    stalled = asyncio.Event()

    async def stall(events):
        stalled.set()
        await asyncio.sleep(0.4)

    slow = Indexer(guard, store, embedder, before_write=stall)
    fast = Indexer(guard, store, embedder)
    other = 4 if first == 3 else 3

    async def second() -> None:
        await stalled.wait()
        while True:
            result = await fast.apply([up("m1", other)])
            if not result.busy:
                return
            await asyncio.sleep(min(result.retry_after_s, 0.05))

    await asyncio.gather(slow.apply([up("m1", first)]), second())
    rows = await store.get([message_pk("t1", "m1")])
    assert [(r["version"], r["text"]) for r in rows] == [(4, "text of m1 v4")]
    assert (await guard.state("t1", "m1"))["done"] == "4"


async def test_v3_without_the_guard_would_win(store, embedder):
    """The same interleaving with no fence: the stalled v3 lands last and wins (what the guard prevents)."""
    def row(v: int) -> MessageRow:
        ev = up("m1", v)
        return MessageRow("t1", "r1", "m1", "u1", ev.text, 0, v, "hash@1", embedder.embed_one(ev.text))

    async def slow_v3():
        await asyncio.sleep(0.3)
        await store.upsert([row(3)])

    await asyncio.gather(slow_v3(), store.upsert([row(4)]))
    assert [r["version"] for r in await store.get([message_pk("t1", "m1")])] == [3]


async def test_poison_event_rejected_with_a_reason_rest_indexed(store, guard, embedder):
    ix = Indexer(guard, store, embedder)
    bad_vec = up("m2", 1, vector=tuple([0.5] * (DIM + 1)))
    too_long = IndexEvent("upsert", "t1", "r1", "m3", 1, "x" * 2001, "u1", 0)
    result = await ix.apply([up("m1", 1), bad_vec, too_long, IndexEvent("rename", "t1"), up("m4", 1, vector=tuple([1.0] + [0.0] * (DIM - 1)))])
    reasons = dict((e.message_id or e.op, r) for e, r in result.rejected)
    assert reasons == {
        "m2": f"vector has {DIM + 1} dimensions, the index has {DIM}",
        "m3": "text is 2001 bytes, the index stores at most 2000 (HOTPATH_INDEX_TEXT_MAX_BYTES)",
        "rename": "unknown op 'rename': use one of upsert, delete, delete_room",
    }
    rows = {r["message_id"]: r for r in await store.get([message_pk("t1", m) for m in ("m1", "m2", "m3", "m4")])}
    assert set(rows) == {"m1", "m4"} and rows["m4"]["model"] == "precomputed"
    assert await guard.known([("t1", "m2"), ("t1", "m3")]) == [False, False]  # rejected events claim nothing


async def test_delete_room_within_the_tenant(store, guard, embedder):
    ix = Indexer(guard, store, embedder)
    await ix.apply([up("m1", 1), up("m2", 1), up("m1", 1, tenant="t2")])
    result = await ix.apply([IndexEvent("delete_room", "t1", room_id="r1")])
    assert result.rooms_deleted
    assert await store.count("t1") == 0 and await store.count("t2") == 1


def test_embedder_and_store_dimensions_must_agree(store, guard):
    with pytest.raises(ValueError, match=r"dim=embedder\.dim"):
        Indexer(guard, store, HashEmbedder(DIM * 2))


def test_the_lease_must_outlast_the_milvus_writes(store, aredis, key_prefix, embedder):
    from index_worker.guard import VersionGuard

    with pytest.raises(ValueError, match="HOTPATH_INDEX_LEASE_TTL_S"):
        Indexer(VersionGuard(aredis, key_prefix, lease_ttl_s=store.max_call_s), store, embedder)


async def test_a_failed_embedding_releases_its_claims(store, guard):
    from taskkit.errors import TransientError

    class Down(HashEmbedder):
        async def embed(self, texts):
            raise TransientError("embedding service down")

    with pytest.raises(TransientError):
        await Indexer(guard, store, Down(DIM)).apply([up("m1", 1)])
    assert (await guard.claim([up("m1", 1)])).go == [up("m1", 1)]  # not busy: the lease was given back


async def test_unreachable_milvus_releases_its_claims(guard, embedder):
    from index_worker.milvus_errors import MilvusTransient
    from index_worker.store import MilvusStore
    from tests.services import free_port

    down = MilvusStore(f"http://127.0.0.1:{free_port()}", collection="x", dim=DIM, timeout_s=2)
    try:
        with pytest.raises(MilvusTransient) as info:
            await Indexer(guard, down, embedder).apply([up("m1", 1)])
        assert info.value.code == 2
    finally:
        await down.close()
    assert (await guard.claim([up("m1", 1)])).go == [up("m1", 1)]
