"""A real `hotpath worker thumb` process for the end-to-end tests, and how to read its memory."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from arq.jobs import Job, JobStatus
from redis.asyncio import Redis

from taskkit import Keys

BIN = Path(sys.executable).parent


def start_worker(redis_url: str, prefix: str, endpoint: str, buckets: tuple[str, str], log: Path,
                 **settings: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTPATH_")}
    env.update(HOTPATH_REDIS_URL=redis_url, HOTPATH_TASKKIT_PREFIX=prefix, HOTPATH_S3_ENDPOINT=endpoint,
               HOTPATH_UPLOADS_BUCKET=buckets[0], HOTPATH_THUMBNAILS_BUCKET=buckets[1], MALLOC_ARENA_MAX="2",
               **{f"HOTPATH_{k.upper()}": str(v) for k, v in settings.items()})
    return subprocess.Popen([str(BIN / "hotpath"), "worker", "thumb"], env=env, stderr=open(log, "wb"))


async def stop_worker(proc: subprocess.Popen) -> int:
    proc.terminate()
    try:
        return await asyncio.to_thread(proc.wait, 20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return await asyncio.to_thread(proc.wait, 5)


async def outcome(redis: Redis, prefix: str, job_id: str, timeout: float = 60.0) -> tuple[str, object]:
    """("ok", result) or ("failed", exception) of a job, once it is complete."""
    job = Job(job_id, redis, _queue_name=Keys(prefix).arq_queue("thumb"))
    deadline = asyncio.get_running_loop().time() + timeout
    while await job.status() != JobStatus.complete:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"job {job_id} not complete after {timeout}s (status {await job.status()})")
        await asyncio.sleep(0.1)
    info = await job.result_info()
    return ("ok" if info.success else "failed"), info.result


def tree(pid: int) -> list[int]:
    """`pid` and its children (the decoder processes)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():  # a child belongs to the thread that forked it
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
    return [pid, *sorted(set(kids))]


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0
