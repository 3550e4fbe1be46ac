"""MilvusStore against the real Milvus Lite server: schema, upsert/edit/delete, rooms, tenants, validation."""

from __future__ import annotations

import uuid

import pytest

from index_worker.milvus_errors import MilvusPermanent, MilvusTransient
from index_worker.store import MessageRow, MilvusStore, chunk_rows, deleted_count, message_pk, quote
from tests.index_worker.conftest import DIM
from tests.services import free_port


def row(tenant: str, mid: str, version: int, text: str, embedder, room: str = "r1") -> MessageRow:
    return MessageRow(tenant, room, mid, "u1", text, 1_700_000_000_000 + version, version, "hash@1", embedder.embed_one(text))


async def test_ensure_collection_is_idempotent_and_loaded(store, embedder):
    await store.ensure_collection()
    await store.ensure_collection()
    await store.upsert([row("t1", "m1", 1, "hello there", embedder)])
    assert await store.count() == 1


async def test_upsert_edit_delete(store, embedder):
    await store.upsert([row("t1", "m1", 1, "first text", embedder), row("t1", "m2", 1, "other", embedder)])
    await store.upsert([row("t1", "m1", 2, "edited text", embedder)])
    got = {r["message_id"]: r for r in await store.get([message_pk("t1", "m1"), message_pk("t1", "m2")])}
    assert (got["m1"]["version"], got["m1"]["text"], got["m1"]["model"]) == (2, "edited text", "hash@1")
    assert got["m1"]["created_at"] == 1_700_000_000_002 and got["m1"]["sender"] == "u1"
    assert await store.count("t1") == 2
    await store.delete([message_pk("t1", "m1"), message_pk("t1", "never-indexed")])
    assert [r["message_id"] for r in await store.get([message_pk("t1", "m1"), message_pk("t1", "m2")])] == ["m2"]
    assert await store.count("t1") == 1


async def test_tenant_isolation_same_message_ids(store, embedder):
    await store.upsert([row("A", "m1", 1, "alpha secret plans", embedder), row("B", "m1", 1, "alpha secret plans", embedder)])
    await store.upsert([row("B", "m2", 1, "beta chatter", embedder)])
    assert await store.count("A") == 1 and await store.count("B") == 2
    hits = await store.search("A", embedder.embed_one("alpha secret plans"), limit=10)
    assert [(h.tenant_id, h.message_id) for h in hits] == [("A", "m1")]
    assert hits[0].score == pytest.approx(1.0, abs=1e-4) and hits[0].text == "alpha secret plans"
    # deleting B's m1 leaves A's m1
    await store.delete([message_pk("B", "m1")])
    assert [h.tenant_id for h in await store.search("A", embedder.embed_one("alpha"), limit=10)] == ["A"]
    assert {h.message_id for h in await store.search("B", embedder.embed_one("alpha"), limit=10)} == {"m2"}


async def test_ids_with_colons_never_collide_across_tenants(store, embedder):
    # The primary key is `{tenant}/{message}`: tenant a:b's message c and tenant a's message b:c are two rows.
    await store.upsert([row("a:b", "c", 1, "first tenant", embedder), row("a", "b:c", 1, "second tenant", embedder)])
    assert (await store.count("a:b"), await store.count("a")) == (1, 1)
    assert [h.text for h in await store.search("a", embedder.embed_one("tenant"), limit=10)] == ["second tenant"]
    with pytest.raises(MilvusPermanent, match="tenant_id must not contain '/'"):
        await store.upsert([row("a/b", "c", 1, "x", embedder)])


async def test_search_by_room_and_delete_room(store, embedder):
    await store.upsert(
        [row("t", f"m{i}", 1, f"note number {i}", embedder, room="r1" if i % 2 else "r2") for i in range(6)]
        + [row("u", "m1", 1, "note number 1", embedder, room="r1")]
    )
    hits = await store.search("t", embedder.embed_one("note number 1"), room_id="r1", limit=10)
    assert {h.message_id for h in hits} == {"m1", "m3", "m5"} and hits[0].message_id == "m1"
    await store.delete_room("t", "r1")
    assert await store.count("t") == 3
    assert await store.count("u") == 1  # the other tenant's room r1 is untouched


async def test_filter_values_are_quoted(store, embedder):
    tricky = 'we"ird\\ten"ant'
    await store.upsert([row(tricky, "m1", 1, "x", embedder), row("we", "m1", 1, "x", embedder)])
    assert await store.count(tricky) == 1
    assert quote('a"b') == '"a\\"b"'


async def test_bad_rows_rejected_before_milvus_is_called(embedder):
    # Nothing listens on this port: had the store called Milvus, the error would be a transient connect failure.
    s = MilvusStore(f"http://127.0.0.1:{free_port()}", collection="never", dim=DIM, timeout_s=2, text_max_bytes=100)
    try:
        bad_dim = MessageRow("t", "r", "m1", "u", "x", 0, 1, "hash@1", [0.1] * (DIM - 1))
        with pytest.raises(MilvusPermanent, match=f"vector has {DIM - 1} dimensions, the index has {DIM}"):
            await s.upsert([bad_dim])
        with pytest.raises(MilvusPermanent, match=r"text is 101 bytes.*at most 100.*HOTPATH_INDEX_TEXT_MAX_BYTES"):
            await s.upsert([MessageRow("t", "r", "m1", "u", "é" * 50 + "x", 0, 1, "hash@1", [0.1] * DIM)])
        with pytest.raises(MilvusPermanent, match="message_id must be a non-empty string"):
            await s.upsert([MessageRow("t", "r", "", "u", "x", 0, 1, "hash@1", [0.1] * DIM)])
        with pytest.raises(MilvusPermanent, match="finite"):
            await s.upsert([MessageRow("t", "r", "m", "u", "x", 0, 1, "hash@1", [float("nan")] * DIM)])
        with pytest.raises(MilvusTransient):  # and a valid row does reach for the (absent) server
            await s.upsert([MessageRow("t", "r", "m1", "u", "x", 0, 1, "hash@1", [0.1] * DIM)])
    finally:
        await s.close()


async def test_existing_collection_with_another_dimension_is_refused(store, milvus_uri):
    other = MilvusStore(milvus_uri, collection=store.collection, dim=DIM * 2, timeout_s=10)
    try:
        with pytest.raises(MilvusPermanent, match=rf"holds {DIM}-d vectors.*makes {DIM * 2}-d.*HOTPATH_MILVUS_COLLECTION"):
            await other.ensure_collection()
    finally:
        await other.close()


async def test_large_batches_are_split_and_all_written(milvus_uri, embedder):
    s = MilvusStore(milvus_uri, collection=f"t_{uuid.uuid4().hex[:12]}", dim=DIM, max_batch_rows=7,
                    max_batch_bytes=4096, text_max_bytes=2000)
    await s.ensure_collection()
    try:
        rows = [row("t", f"m{i}", 1, "word " * (i % 50), embedder) for i in range(60)]
        chunks = list(chunk_rows(rows, DIM, max_bytes=4096, max_rows=7))
        assert len(chunks) > 60 / 7 and all(len(c) <= 7 for c in chunks)
        assert sum(len(c) for c in chunks) == 60
        assert await s.upsert(rows) == 60
        assert await s.count("t") == 60
    finally:
        await s.drop_collection()
        await s.close()


def test_deleted_count_handles_both_result_shapes():
    assert deleted_count(["a:1", "a:2"]) == 2
    assert deleted_count({"delete_count": 3}) == 3
