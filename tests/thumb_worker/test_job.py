"""Thumbnail jobs against a real S3 server (moto): thumbnails written with their provenance, a replay
rewrites nothing, a new ETag or new settings redo them, removal removes them, and missing / empty /
oversized sources are refused before any download."""

from __future__ import annotations

import asyncio
import io

import pytest

from thumb_worker import metrics
from thumb_worker.config import ThumbConfig
from thumb_worker.decoder import DecoderPool
from thumb_worker.guards import Rejected
from thumb_worker.job import ThumbJobs
from thumb_worker.producer import idempotency_key
from thumb_worker.spec import ThumbSpec

from . import images


def put(s3, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
    return s3.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type).etag


def stats(s3, bucket: str, keys: list[str]) -> dict[str, tuple]:
    out = {}
    for k in keys:
        st = s3.stat_object(bucket, k)
        out[k] = (st.last_modified, st.etag, st.metadata.get("x-amz-meta-source-etag"),
                  st.metadata.get("x-amz-meta-thumb-settings"), st.content_type)
    return out


def get_count() -> float:
    """How many S3 GETs (downloads) this process has made so far."""
    for m in metrics.S3_SECONDS.collect():
        for sample in m.samples:
            if sample.name.endswith("_count") and sample.labels.get("op") == "get":
                return sample.value
    return 0.0


KEY = "room 1/ünï cödé photo.jpg"  # spaces and non-ASCII survive to the thumbnail keys


async def test_made_then_replay_is_a_noop_then_a_new_etag_is_redone(s3, buckets, jobs, config):
    up, th = buckets
    etag = put(s3, up, KEY, images.photo(1600, 1200).jpegsave_buffer())
    r = await jobs.make(up, KEY, etag)
    assert r["status"] == "made" and r["etag"] == etag.strip('"')
    keys = [f"{KEY}/64.webp", f"{KEY}/256.webp", f"{KEY}/1024.webp"]
    assert [t["key"] for t in r["thumbnails"]] == keys
    first = stats(s3, th, keys)
    for _, _, src_etag, settings_hash, ctype in first.values():
        assert src_etag == etag.strip('"') and settings_hash == config.settings_hash and ctype == "image/webp"

    await asyncio.sleep(1.1)  # S3's Last-Modified has one-second resolution: a rewrite now would show
    made = metrics.MADE.labels("64")._value.get()
    assert (await jobs.make(up, KEY, etag))["status"] == "skipped"
    assert stats(s3, th, keys) == first, "a replay must not rewrite any thumbnail"
    assert metrics.MADE.labels("64")._value.get() == made

    etag2 = put(s3, up, KEY, images.photo(800, 1200).jpegsave_buffer())  # a new version, portrait
    assert etag2 != etag
    r2 = await jobs.make(up, KEY, etag2)
    assert r2["status"] == "made" and r2["thumbnails"][-1]["height"] == 1024
    second = stats(s3, th, keys)
    assert all(second[k][2] == etag2.strip('"') and second[k][0] > first[k][0] for k in keys)


async def test_changed_settings_redo_the_thumbnails(s3, buckets, jobs, config):
    up, th = buckets
    etag = put(s3, up, "a.png", images.photo(600, 400).pngsave_buffer())
    await jobs.make(up, "a.png", etag)
    other = ThumbConfig(uploads_bucket=up, thumbnails_bucket=th, spec=ThumbSpec(quality=50))
    assert other.settings_hash != config.settings_hash
    pool = DecoderPool(other.spec, size=1, time_limit_s=20)
    try:
        redo = ThumbJobs(s3, pool, other)
        assert not await redo.current("a.png", etag)
        assert (await redo.make(up, "a.png", etag))["status"] == "made"
        assert await redo.current("a.png", etag)
        assert not await jobs.current("a.png", etag)  # and back: the old settings would redo them too
    finally:
        await pool.close()


async def test_removed_source_removes_its_thumbnails_only(s3, buckets, jobs):
    up, th = buckets
    for key in ("gone.jpg", "gone.jpg.2"):
        await jobs.make(up, key, put(s3, up, key, images.photo(300, 200).jpegsave_buffer()))
    put(s3, th, "gone.jpg/notes.txt", b"not a thumbnail")  # not ours to delete
    assert (await jobs.remove(up, "gone.jpg"))["status"] == "kept"  # the source is still there
    s3.remove_object(up, "gone.jpg")
    r = await jobs.remove(up, "gone.jpg")
    assert sorted(r["removed"]) == ["gone.jpg/1024.webp", "gone.jpg/256.webp", "gone.jpg/64.webp"]
    left = sorted(o.object_name for o in s3.list_objects(th, recursive=True))
    assert left == ["gone.jpg.2/1024.webp", "gone.jpg.2/256.webp", "gone.jpg.2/64.webp", "gone.jpg/notes.txt"]
    assert (await jobs.remove(up, "gone.jpg"))["removed"] == []  # a replayed removal is harmless


async def test_refusals_before_any_download(s3, buckets, jobs, config):
    up, _ = buckets
    before = get_count()
    with pytest.raises(Rejected) as err:
        await jobs.make(up, "nope.jpg", "x")
    assert err.value.label == "missing" and "NoSuchKey" in str(err.value)
    put(s3, up, "empty.jpg", b"")
    with pytest.raises(Rejected) as err:
        await jobs.make(up, "empty.jpg", "x")
    assert err.value.label == "empty" and "zero-byte" in str(err.value)
    put(s3, up, "big.png", b"\x89PNG" + b"\x00" * (config.max_bytes - 3))
    with pytest.raises(Rejected) as err:
        await jobs.make(up, "big.png", "x")
    assert err.value.label == "too_large"
    assert "source is 25.0 MB (25000001 bytes), limit 25.0 MB (25000000 bytes) (HOTPATH_THUMB_MAX_BYTES)" in str(err.value)
    with pytest.raises(Rejected) as err:
        await jobs.make("some-other-bucket", "a.jpg", "x")
    assert err.value.label == "wrong_bucket"
    assert get_count() == before, "nothing may be downloaded for a refused source"


async def test_the_byte_limit_holds_while_reading(s3, buckets, jobs, tmp_path):
    """An object that grew between stat and download is cut off at the limit, not read whole."""
    up, _ = buckets
    put(s3, up, "grown.jpg", b"\xff\xd8" + b"\x00" * 3_000_000)
    small = ThumbJobs(s3, jobs.pool, ThumbConfig(uploads_bucket=up, thumbnails_bucket=buckets[1], max_bytes=1_000_000))
    with pytest.raises(Rejected) as err:
        await asyncio.to_thread(small._download, up, "grown.jpg", str(tmp_path / "src"))
    assert err.value.label == "too_large"
    assert (tmp_path / "src").stat().st_size <= 1_000_000


async def test_hostile_source_in_s3_is_refused_with_its_reason(s3, buckets, jobs):
    up, th = buckets
    put(s3, up, "bomb.png", images.png_declaring(30000, 30000))
    with pytest.raises(Rejected) as err:
        await jobs.make(up, "bomb.png", "x")
    assert "30000×30000 = 900 MP, limit 50 MP (HOTPATH_THUMB_MAX_PIXELS)" in str(err.value)
    assert list(s3.list_objects(th, recursive=True)) == []


def test_config_and_idempotency_key():
    with pytest.raises(ValueError, match="HOTPATH_UPLOADS_BUCKET and HOTPATH_THUMBNAILS_BUCKET"):
        ThumbConfig(uploads_bucket="same", thumbnails_bucket="same")
    a = idempotency_key("up", "k.jpg", '"abc"')
    assert a == idempotency_key("up", "k.jpg", "abc") != idempotency_key("up", "k.jpg", "abd")
    assert "abc" in a and "k.jpg" in a
    c = ThumbConfig()
    assert c.thumb_key("a/b.jpg", 64) == "a/b.jpg/64.webp"
    assert ThumbConfig(spec=ThumbSpec(sizes=(1024, 64, 256))).settings_hash == c.settings_hash  # order-free
    assert ThumbConfig(spec=ThumbSpec(format="jpeg")).settings_hash != c.settings_hash


def test_s3_failures_are_sorted_into_permanent_and_transient():
    import urllib3
    from minio.error import S3Error, ServerError

    from taskkit.errors import RateLimited, TransientError
    from thumb_worker.job import _s3_failure

    def s3err(code: str) -> S3Error:
        return S3Error(None, code, "msg", "/b/k", "rid", "hid")

    assert isinstance(_s3_failure(s3err("NoSuchKey"), "stat b/k"), Rejected)
    assert isinstance(_s3_failure(s3err("NoSuchBucket"), "stat b/k"), Rejected)
    assert isinstance(_s3_failure(s3err("SlowDown"), "get b/k"), RateLimited)
    for exc in (s3err("InternalError"), ServerError("boom", 503), urllib3.exceptions.MaxRetryError(None, "/b/k"),
                urllib3.exceptions.ReadTimeoutError(None, "/b/k", "read timed out"), ConnectionRefusedError()):
        got = _s3_failure(exc, "get b/k")
        assert type(got) is TransientError and "get b/k" in str(got), exc
