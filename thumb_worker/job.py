"""One thumbnail job against object storage: stat the source, skip when its thumbnails are current, download
it (bounded), have a decoder make the thumbnails, write them with their provenance; and the removal job.

Why the provenance in each thumbnail's metadata (source ETag + settings hash) rather than in Redis: the
thumbnails bucket is then the single truth, so a replayed event, a backfill scan and a changed setting are
decided by one `stat` per size, and nothing can drift. Every S3 call runs in a thread (the minio SDK blocks)
with the factory's timeouts; its failures are sorted here into permanent (missing) and transient (the rest).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

from taskkit.errors import RateLimited, TransientError
from thumb_worker import metrics
from thumb_worker.config import ThumbConfig
from thumb_worker.decoder import DecoderPool
from thumb_worker.guards import Rejected, check_size
from thumb_worker.producer import normalize_etag
from thumb_worker.spec import EXTENSIONS

log = logging.getLogger("thumb_worker.job")
T = TypeVar("T")

META_ETAG = "source-etag"
META_SETTINGS = "thumb-settings"
CHUNK = 256 * 1024
_MISSING = ("NoSuchKey", "NoSuchBucket", "NoSuchObject")
_SLOW_DOWN = ("SlowDown", "SlowDownRead", "SlowDownWrite", "TooManyRequests", "RequestLimitExceeded")
_THUMB_NAME = re.compile(r"^\d+\.(?:" + "|".join(sorted(set(EXTENSIONS.values()))) + r")$")


def _s3_failure(exc: BaseException, what: str) -> Exception:
    """A taskkit error for a failed S3 call: missing → permanent, SlowDown → rate-limited, anything else transient."""
    if isinstance(exc, S3Error):
        if exc.code in _MISSING:
            return Rejected("missing", f"{what}: {exc.code} ({exc.message}); the object may have been deleted")
        if exc.code in _SLOW_DOWN:
            return RateLimited(f"{what}: object storage asks to slow down ({exc.code})")
        return TransientError(f"{what}: S3 error {exc.code}: {exc.message}")
    if isinstance(exc, ServerError):
        return TransientError(f"{what}: S3 answered HTTP {exc.status_code}")
    if isinstance(exc, InvalidResponseError):
        return TransientError(f"{what}: S3 sent an invalid response ({str(exc)[:200]})")
    return TransientError(f"{what}: object storage unavailable ({type(exc).__name__}: {str(exc)[:200]})")


def _take(items: Iterator[Any], n: int) -> list[Any]:
    """Up to `n` more items of a (blocking) iterator."""
    out = []
    for item in items:
        out.append(item)
        if len(out) >= n:
            break
    return out


_S3_ERRORS = (S3Error, ServerError, InvalidResponseError, urllib3.exceptions.HTTPError, OSError)


class ThumbJobs:
    """The thumbnail worker's jobs over one S3 client and one DecoderPool (both owned by the caller)."""

    def __init__(self, client: Minio, pool: DecoderPool, config: ThumbConfig) -> None:
        self.s3 = client
        self.pool = pool
        self.config = config

    async def _call(self, op: str, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        start = time.perf_counter()
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except _S3_ERRORS as exc:
            failure = _s3_failure(exc, what)
            if not isinstance(failure, Rejected):  # "no such key" is an answer (a thumbnail not made yet)
                metrics.S3_ERRORS.labels(op, exc.code if isinstance(exc, S3Error) else type(exc).__name__).inc()
            raise failure from exc
        finally:
            metrics.S3_SECONDS.labels(op).observe(time.perf_counter() - start)

    async def check(self) -> None:
        """Start-up check: both buckets exist (RuntimeError naming the setting otherwise)."""
        for bucket, var in ((self.config.uploads_bucket, "HOTPATH_UPLOADS_BUCKET"),
                            (self.config.thumbnails_bucket, "HOTPATH_THUMBNAILS_BUCKET")):
            if not await self._call("bucket_exists", f"bucket {bucket}", self.s3.bucket_exists, bucket):
                raise RuntimeError(f"bucket {bucket!r} does not exist: create it or set {var}")

    async def current(self, key: str, etag: str) -> bool:
        """True when every configured size of source `key` exists, made from `etag` with the current settings."""
        want = (normalize_etag(etag), self.config.settings_hash)
        for size in self.config.spec.sizes:
            tkey = self.config.thumb_key(key, size)
            try:
                st = await self._call("stat", f"stat {tkey}", self.s3.stat_object, self.config.thumbnails_bucket, tkey)
            except Rejected:  # that thumbnail is missing
                return False
            meta = st.metadata or {}
            got = (meta.get(f"x-amz-meta-{META_ETAG}", ""), meta.get(f"x-amz-meta-{META_SETTINGS}", ""))
            if got != want:
                return False
        return True

    async def sources(self, prefix: str = "", page: int = 100) -> AsyncIterator[list[tuple[str, str]]]:
        """(key, ETag) of every object under `prefix` of the uploads bucket, a page at a time (for the backfill):
        listed lazily, each page fetched in a thread."""
        bucket = self.config.uploads_bucket
        listing = self.s3.list_objects(bucket, prefix=prefix or None, recursive=True)  # a generator: no call yet
        while objs := await self._call("list", f"list {bucket}/{prefix}", _take, listing, page):
            yield [(o.object_name, normalize_etag(o.etag or "")) for o in objs if not o.is_dir]

    async def make(self, bucket: str, key: str, etag: str | None = None, size: int | None = None) -> dict[str, Any]:
        """Make (or confirm) the thumbnails of object `key` of `bucket`; returns what was done.

        The object's ETag at `stat` time is authoritative: an event that names an older ETag still leads
        to thumbnails of what the object is now (the newer version's own event then finds them current)."""
        cfg = self.config
        if bucket != cfg.uploads_bucket:
            raise Rejected("wrong_bucket", f"bucket {bucket!r} is not the uploads bucket {cfg.uploads_bucket!r} "
                                           "(HOTPATH_UPLOADS_BUCKET)")
        try:
            st = await self._call("stat", f"stat {bucket}/{key}", self.s3.stat_object, bucket, key)
            check_size(int(st.size or 0), cfg.max_bytes)
            src_etag = normalize_etag(st.etag or "")
            if await self.current(key, src_etag):
                metrics.SOURCES.labels("skipped").inc()
                return {"status": "skipped", "etag": src_etag}
            with tempfile.TemporaryDirectory(prefix="hp-thumb-", dir=cfg.tmp_dir) as tmp:
                path = os.path.join(tmp, "source")
                src_etag = await self._call("get", f"get {bucket}/{key}", self._download, bucket, key, path) or src_etag
                result = await self.pool.run(path)
        except Rejected as exc:
            metrics.SOURCES.labels("rejected").inc()
            metrics.REJECTED.labels(exc.label).inc()
            raise
        metrics.SOURCE_PIXELS.observe(result.header.pixels)
        for stage, seconds in (*result.timings.items(), ("total", result.seconds)):
            metrics.PIPELINE_SECONDS.labels(stage).observe(seconds)
        meta = {META_ETAG: src_etag, META_SETTINGS: cfg.settings_hash}
        written = []
        for t in result.thumbs:
            tkey = cfg.thumb_key(key, t.size)
            await self._call("put", f"put {tkey}", self._put, tkey, t.data, meta)
            metrics.MADE.labels(str(t.size)).inc()
            written.append({"key": tkey, "width": t.width, "height": t.height, "bytes": len(t.data)})
        # A removal that ran while we worked found no thumbnails to delete: if the source is gone now, undo.
        if not await self._exists(bucket, key):
            await self._remove_all(key)
            metrics.SOURCES.labels("removed").inc()
            return {"status": "removed", "etag": src_etag}
        metrics.SOURCES.labels("made").inc()
        log.info("thumbnails made", extra={"key": key, "etag": src_etag, "sizes": [t.size for t in result.thumbs],
                                           "seconds": round(result.seconds, 3)})
        return {"status": "made", "etag": src_etag, "thumbnails": written,
                "source": {"width": result.header.width, "height": result.header.height,
                           "frames": result.header.pages, "loader": result.header.loader}}

    def _download(self, bucket: str, key: str, path: str) -> str | None:
        """Spool the object to `path`, refusing it as soon as it passes max_bytes; returns its ETag."""
        resp = self.s3.get_object(bucket, key)
        try:
            total = 0
            with open(path, "wb") as f:
                for chunk in resp.stream(CHUNK):
                    total += len(chunk)
                    check_size(total or 1, self.config.max_bytes)  # the object grew since stat
                    f.write(chunk)
            check_size(total, self.config.max_bytes)
            metrics.SOURCE_BYTES.observe(total)
            etag = resp.headers.get("ETag")
            return normalize_etag(etag) if etag else None
        finally:
            resp.close()
            resp.release_conn()

    def _put(self, tkey: str, data: bytes, meta: dict[str, str]) -> None:
        import io

        self.s3.put_object(self.config.thumbnails_bucket, tkey, io.BytesIO(data), len(data),
                           content_type=self.config.content_type, metadata=meta)

    async def _exists(self, bucket: str, key: str) -> bool:
        try:
            await self._call("stat", f"stat {bucket}/{key}", self.s3.stat_object, bucket, key)
        except Rejected:
            return False
        return True

    async def remove(self, bucket: str, key: str) -> dict[str, Any]:
        """Remove every thumbnail of source `key`, unless the source exists again (a later upload)."""
        if bucket != self.config.uploads_bucket:
            raise Rejected("wrong_bucket", f"bucket {bucket!r} is not the uploads bucket "
                                           f"{self.config.uploads_bucket!r} (HOTPATH_UPLOADS_BUCKET)")
        if await self._exists(bucket, key):
            return {"status": "kept", "removed": []}
        removed = await self._remove_all(key)
        metrics.SOURCES.labels("removed").inc()
        return {"status": "removed", "removed": removed}

    async def _remove_all(self, key: str) -> list[str]:
        """Delete `{key}/{size}.{ext}` of any size and format (a format change leaves older ones behind)."""
        bucket = self.config.thumbnails_bucket

        def names() -> list[str]:
            objs = self.s3.list_objects(bucket, prefix=f"{key}/", recursive=False)
            return [o.object_name for o in objs if _THUMB_NAME.match(o.object_name[len(key) + 1:])]

        found = await self._call("list", f"list {bucket}/{key}/", names)
        for name in found:
            await self._call("remove", f"remove {name}", self.s3.remove_object, bucket, name)
        return found
