"""Crash: 1,000 jobs, the worker process SIGKILLed three times mid-run and restarted; every job completes
and each job's effect is applied exactly once (checked by an idempotent effect ledger)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from taskkit import Inspector, Producer, Watermarks
from taskkit.keys import Keys
from tests.taskkit import app_worker
from tests.taskkit.harness import start_app_worker

N = 1000


@pytest.mark.parametrize("fast", [False, True], ids=["arq-worker", "fastworker"])
async def test_sigkill_three_times_every_job_once(redis, redis_url, tk_prefix, tmp_path, fast):
    prod = Producer(redis, prefix=tk_prefix, watermarks=Watermarks(high=100_000, low=50_000))
    ids = []
    for n in range(N):
        ids.append((await prod.enqueue(app_worker.apply_effect, n, n % 7 + 1)).job_id)
    ledger, total, executions = f"{tk_prefix}ledger", f"{tk_prefix}total", f"{tk_prefix}executions"
    kills = []
    t0 = time.monotonic()
    with (tmp_path / "worker.log").open("wb") as log:
        proc = start_app_worker(redis_url, tk_prefix, log, concurrency=20, sleep_s=0.02, fast=fast)
        try:
            # not multiples of 100: ARQ reads 100 ids per poll, and between two reads nothing runs
            # (FastWorker claims as slots free up, so any threshold is mid-run for it)
            for threshold in (230, 470, 730):
                while await redis.scard(ledger) < threshold:
                    assert proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                    assert time.monotonic() - t0 < 60, "worker made no progress"
                    await asyncio.sleep(0.005)
                # Kill while jobs are running: after a restart, re-runs shift ARQ's 100-id reads, so a threshold
                # alone can land in the gap between two reads, when nothing runs (seen once in ~10 suite runs).
                while not [k async for k in redis.scan_iter(match=f"arq:in-progress:{tk_prefix}*", count=1000)]:
                    assert time.monotonic() - t0 < 60, "no job ever in progress"
                    await asyncio.sleep(0.001)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                # jobs the dead worker was running: ARQ re-runs them once their in-progress key expires
                in_progress = [k async for k in redis.scan_iter(match=f"arq:in-progress:{tk_prefix}*", count=1000)]
                kills.append((await redis.scard(ledger), len(in_progress)))
                proc = start_app_worker(redis_url, tk_prefix, log, concurrency=20, sleep_s=0.02, fast=fast)
            while await redis.scard(ledger) < N or await redis.zcard(Keys(tk_prefix).arq_queue("app")):
                assert proc.poll() is None
                assert time.monotonic() - t0 < 90, f"only {await redis.scard(ledger)} of {N} done"
                await asyncio.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
    # Killed mid-run: each kill interrupted running jobs, part-way through the 1,000.
    assert len(kills) == 3 and all(0 < n < N for n, _ in kills), kills
    assert all(running > 0 for _, running in kills), kills
    assert await redis.scard(ledger) == N
    assert {m.decode() for m in await redis.smembers(ledger)} == set(ids)
    assert int(await redis.get(total)) == sum(n % 7 + 1 for n in range(N))  # each effect exactly once
    assert int(await redis.get(executions)) > N  # re-runs did happen; the ledger absorbed them
    ins = Inspector(redis, prefix=tk_prefix)
    assert await ins.count("dead") == 0 and await ins.count("retry") == 0
