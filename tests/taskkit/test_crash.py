"""Crash: 1,000 jobs, the worker process SIGKILLed three times mid-run and restarted; every job completes,
each job's effect is applied exactly once (checked by an idempotent effect ledger), and the executions are
bounded on both sides: more than N (the kills did interrupt jobs) and at most N + the jobs in flight at
each kill (nothing but a kill, or a recorded retry, makes a job run again)."""

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


async def _in_progress(redis, prefix: str) -> set[str]:
    """Ids of the jobs that have ARQ's in-progress key (claimed, their end not written yet)."""
    marker = "arq:in-progress:"
    return {k.decode()[len(marker):] async for k in redis.scan_iter(match=f"{marker}{prefix}*", count=1000)}


async def _runs(redis, runs_key: str) -> dict[str, int]:
    return {a.decode(): int(b) for a, b in (await redis.hgetall(runs_key)).items()}


async def _running(redis, prefix: str, runs_key: str, runs_before: dict[str, int]) -> set[str]:
    """Jobs whose execution started since the previous kill (their run count grew) and whose end is not
    written (their in-progress key is there). A key left over from an earlier kill does not count: that
    job has not run since."""
    claimed = sorted(await _in_progress(redis, prefix))
    counts = await redis.hmget(runs_key, claimed) if claimed else []
    return {j for j, c in zip(claimed, counts, strict=True) if c is not None and int(c) > runs_before.get(j, 0)}


@pytest.mark.parametrize("fast", [False, True], ids=["arq-worker", "fastworker"])
async def test_sigkill_three_times_every_job_once(redis, redis_url, tk_prefix, tmp_path, fast):
    prod = Producer(redis, prefix=tk_prefix, watermarks=Watermarks(high=100_000, low=50_000))
    ids = []
    for n in range(N):
        ids.append((await prod.enqueue(app_worker.apply_effect, n, n % 7 + 1)).job_id)
    ledger, total, executions, runs_key = (f"{tk_prefix}{k}" for k in ("ledger", "total", "executions", "runs"))
    kills = []  # (jobs done, jobs in flight) at each kill
    runs_before: dict[str, int] = {}
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
                while not await _running(redis, tk_prefix, runs_key, runs_before):
                    assert time.monotonic() - t0 < 60, "no job ever in progress"
                    await asyncio.sleep(0.001)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                # the jobs this kill interrupted: each will run once more
                in_flight = await _running(redis, tk_prefix, runs_key, runs_before)
                kills.append((await redis.scard(ledger), len(in_flight)))
                runs_before = await _runs(redis, runs_key)
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
    ran = int(await redis.get(executions))
    assert ran == sum((await _runs(redis, runs_key)).values())
    assert ran > N  # re-runs did happen; the ledger absorbed them
    # ... and only the kills caused them: each interrupted execution costs one more run, nothing else does
    # (a timeout would be a retry, recorded in the queue's counters; none is expected at 20 ms per job).
    ins = Inspector(redis, prefix=tk_prefix)
    retried = (await ins.stats(app_worker.QUEUE))[0].retried
    assert ran <= N + sum(running for _, running in kills) + retried, (ran, kills, retried)
    assert await ins.count("dead") == 0 and await ins.count("retry") == 0
