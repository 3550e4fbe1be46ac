"""`hotpath worker index|thumb` as real processes on taskkit: they answer a job, are runnable by `arq`,
and a wrong Milvus / S3 setting stops them with a message naming the variable."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from arq.jobs import Job
from redis.asyncio import Redis

from taskkit import Keys, Producer
from tests.services import free_port

BIN = Path(sys.executable).parent


def _env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTPATH_")}
    # The index worker with the hashing embedder (MiniLM has its own test), in a collection of this test only,
    # without a /metrics port (tests run in parallel).
    collection = "w_" + prefix.replace(":", "_").replace("-", "_").strip("_")
    env.update(HOTPATH_REDIS_URL=redis_url, HOTPATH_TASKKIT_PREFIX=prefix, HOTPATH_LOG_LEVEL="INFO",
               HOTPATH_EMBEDDER="hash", HOTPATH_MILVUS_COLLECTION=collection, HOTPATH_INDEX_METRICS_PORT="0", **extra)
    return env


@pytest.fixture
def buckets(s3_endpoint):
    from urllib.parse import urlparse

    from minio import Minio

    client = Minio(urlparse(s3_endpoint).netloc, access_key="minioadmin", secret_key="minioadmin", secure=False)
    for b in ("uploads", "thumbnails"):
        if not client.bucket_exists(b):
            client.make_bucket(b)
    return s3_endpoint


async def _ping(redis_url: str, prefix: str, queue: str, timeout: float = 60) -> str:
    redis = Redis.from_url(redis_url)
    producer = Producer(redis, prefix=prefix)
    try:
        enq = await producer.enqueue("ping", _queue=queue)
        job = Job(enq.job_id, redis, _queue_name=Keys(prefix).arq_queue(queue))
        return await job.result(timeout=timeout, poll_delay=0.2)
    finally:
        await redis.aclose()


@pytest.mark.parametrize("kind", ["index", "thumb"])
async def test_worker_answers_a_job_and_stops_on_sigterm(kind, redis_url, key_prefix, milvus_uri, buckets, tmp_path):
    env = _env(redis_url, key_prefix, HOTPATH_MILVUS_URI=milvus_uri, HOTPATH_S3_ENDPOINT=buckets)
    log = tmp_path / "worker.log"
    proc = subprocess.Popen([str(BIN / "hotpath"), "worker", kind], env=env, stderr=open(log, "wb"))
    try:
        assert await _ping(redis_url, key_prefix, kind) == "pong", log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, 15)
    assert rc == 0, log.read_text()[-2000:]
    assert '"msg":"shutdown on SIGTERM' in log.read_text()


async def test_index_worker_runs_under_plain_arq(redis_url, key_prefix, milvus_uri):
    env = _env(redis_url, key_prefix, HOTPATH_MILVUS_URI=milvus_uri)
    proc = subprocess.Popen([str(BIN / "arq"), "index_worker.worker.WorkerSettings"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert await _ping(redis_url, key_prefix, "index") == "pong"
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 15)


@pytest.mark.parametrize(
    ("kind", "var", "value"),
    [("index", "HOTPATH_MILVUS_URI", "http://127.0.0.1:{port}"), ("thumb", "HOTPATH_S3_ENDPOINT", "http://127.0.0.1:{port}")],
)
def test_unreachable_dependency_names_the_setting(kind, var, value, redis_url, key_prefix):
    env = _env(redis_url, key_prefix, **{var: value.format(port=free_port()), "HOTPATH_MILVUS_TIMEOUT_S": "2"})
    proc = subprocess.run([str(BIN / "hotpath"), "worker", kind], env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode != 0
    assert var in proc.stderr, proc.stderr[-2000:]
