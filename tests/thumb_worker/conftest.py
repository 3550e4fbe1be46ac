"""Fixtures of the thumbnail worker tests: a MinIO client on the session's moto server, a fresh pair of
buckets per test, and a decoder pool (real decoder processes)."""

from __future__ import annotations

import uuid

import pytest

from thumb_worker.config import ThumbConfig
from thumb_worker.decoder import DecoderPool
from thumb_worker.job import ThumbJobs
from thumb_worker.spec import ThumbSpec
from thumb_worker.storage import make_minio


@pytest.fixture
def s3(s3_endpoint):
    return make_minio(s3_endpoint, "minioadmin", "minioadmin", read_timeout_s=10)


def empty_bucket(client, bucket: str) -> None:
    for obj in client.list_objects(bucket, recursive=True):
        client.remove_object(bucket, obj.object_name)
    client.remove_bucket(bucket)


@pytest.fixture
def buckets(s3):
    """(uploads, thumbnails): two new buckets, removed with their objects afterwards."""
    tag = uuid.uuid4().hex[:10]
    pair = (f"hpt-up-{tag}", f"hpt-th-{tag}")
    for b in pair:
        s3.make_bucket(b)
    yield pair
    for b in pair:
        empty_bucket(s3, b)


@pytest.fixture
def config(buckets) -> ThumbConfig:
    return ThumbConfig(uploads_bucket=buckets[0], thumbnails_bucket=buckets[1], s3_timeout_s=5, concurrency=2)


@pytest.fixture
async def pool():
    p = DecoderPool(ThumbSpec(), size=2, time_limit_s=20)
    yield p
    await p.close()


@pytest.fixture
async def jobs(s3, config):
    p = DecoderPool(config.spec, size=config.concurrency, time_limit_s=config.time_limit_s)
    yield ThumbJobs(s3, p, config)
    await p.close()
