"""taskkit.fastworker.FastWorker against real Redis, as a generic ARQ worker: same keys, same results, same
retry / failure / shutdown semantics as arq.worker.Worker, and safe to run beside it on one queue.

(The taskkit-level behaviour -- retry queue, dead letters, idempotency, batching, the SIGKILL crash test --
runs on both workers through the `worker_kind` fixture in the other test modules.)"""

from __future__ import annotations

import asyncio
import collections
import subprocess
import sys

import pytest
from arq.connections import create_pool
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import JobStatus
from arq.worker import JobExecutionFailed, Retry, Worker

from taskkit.fastworker import FastWorker, create_worker
from tests.taskkit.harness import wait_until

EXECUTIONS: collections.Counter[str] = collections.Counter()


async def work(ctx, n: int) -> int:
    EXECUTIONS[ctx["job_id"]] += 1
    await asyncio.sleep(0.002)
    return n * 2


async def retry_once(ctx) -> int:
    if ctx["job_try"] == 1:
        raise Retry(defer=0.1)
    return ctx["job_try"]


async def fails(ctx) -> None:
    raise ValueError("bad input")


async def sleeps(ctx, s: float) -> str:
    EXECUTIONS[ctx["job_id"]] += 1
    await asyncio.sleep(s)
    return "slept"


async def slow_first_try(ctx, s: float) -> str:
    EXECUTIONS[ctx["job_id"]] += 1
    if ctx["job_try"] == 1:
        await asyncio.sleep(s)
    return f"try {ctx['job_try']}"


FUNCS = [work, retry_once, fails, sleeps, slow_first_try]


@pytest.fixture
async def pool(arq_redis, tk_prefix):
    p = await create_pool(arq_redis, default_queue_name=f"{tk_prefix}q")
    yield p
    await p.aclose()


def _worker(cls: type[Worker], arq_redis, queue: str, **kw) -> Worker:
    kw.setdefault("max_jobs", 20)
    return cls(FUNCS, queue_name=queue, redis_settings=arq_redis, handle_signals=False, poll_delay=0.01, **kw)


async def _arq_keys(pool, tk_prefix: str, kind: str) -> list[bytes]:
    return [k async for k in pool.scan_iter(match=f"arq:{kind}:{tk_prefix}*", count=1000)]


async def test_mixed_with_arq_workers_every_job_once_results_readable(pool, arq_redis, tk_prefix):
    n = 600
    q = f"{tk_prefix}q"
    jobs = [await pool.enqueue_job("work", i, _job_id=f"{tk_prefix}j{i}") for i in range(n)]
    fast = _worker(FastWorker, arq_redis, q, burst=True)
    fast2 = _worker(FastWorker, arq_redis, q, burst=True)
    plain = _worker(Worker, arq_redis, q, burst=True)
    await asyncio.gather(fast.async_run(), fast2.async_run(), plain.async_run())
    for w in (fast, fast2, plain):
        await w.close()
    ids = [j.job_id for j in jobs]
    assert [EXECUTIONS[i] for i in ids] == [1] * n  # no job ran twice, none was skipped
    assert fast.jobs_complete + fast2.jobs_complete + plain.jobs_complete == n
    assert fast.jobs_complete > 0 and fast2.jobs_complete > 0
    assert fast.claims < fast.jobs_complete  # claims were batched
    for i, j in enumerate(jobs):
        assert await j.result(timeout=1) == i * 2  # arq's own Job API reads the fast worker's results
    info = await jobs[0].result_info()
    assert info.success and info.job_try == 1 and info.function == "work" and info.args == (0,)
    assert await jobs[0].status() == JobStatus.complete
    # finished jobs leave nothing but their results, as with ARQ
    assert await pool.zcard(q) == 0
    for kind in ("job", "in-progress", "retry"):
        assert await _arq_keys(pool, tk_prefix, kind) == [], kind
    assert len(await _arq_keys(pool, tk_prefix, "result")) == n


@pytest.mark.parametrize("cls", [Worker, FastWorker], ids=["arq-worker", "fastworker"])
async def test_retry_failure_max_tries_expiry_unknown_function_like_arq(cls, pool, arq_redis, tk_prefix):
    q = f"{tk_prefix}q"
    r = await pool.enqueue_job("retry_once", _job_id=f"{tk_prefix}retry")
    f = await pool.enqueue_job("fails", _job_id=f"{tk_prefix}fails")
    u = await pool.enqueue_job("nope", _job_id=f"{tk_prefix}unknown")
    e = await pool.enqueue_job("work", 1, _job_id=f"{tk_prefix}expired")
    await pool.delete(job_key_prefix + e.job_id)  # the job key expired before a worker got to it
    m = await pool.enqueue_job("work", 2, _job_id=f"{tk_prefix}maxed")
    await pool.set(retry_key_prefix + m.job_id, 5)  # already tried max_tries (5) times
    w = _worker(cls, arq_redis, q, burst=True)
    await w.async_run()
    await w.close()
    assert await r.result(timeout=1) == 2 and (await r.result_info()).job_try == 2
    with pytest.raises(ValueError, match="bad input"):
        await f.result(timeout=1)
    with pytest.raises(JobExecutionFailed, match="function 'nope' not found"):
        await u.result(timeout=1)
    with pytest.raises(JobExecutionFailed, match="job expired"):
        await e.result(timeout=1)
    with pytest.raises(JobExecutionFailed, match="max 5 retries exceeded"):
        await m.result(timeout=1)
    assert (w.jobs_complete, w.jobs_failed, w.jobs_retried) == (1, 4, 1)
    assert await pool.zcard(q) == 0
    for kind in ("job", "in-progress", "retry"):
        assert await _arq_keys(pool, tk_prefix, kind) == [], kind


async def test_claim_sets_arq_in_progress_key_and_try_counter(pool, arq_redis, tk_prefix):
    q = f"{tk_prefix}q"
    job = await pool.enqueue_job("sleeps", 0.5, _job_id=f"{tk_prefix}slow")
    w = _worker(FastWorker, arq_redis, q)
    main = asyncio.create_task(w.async_run())
    try:
        await wait_until(lambda: EXECUTIONS[job.job_id] == 1, within=5)
        ttl = await pool.pttl(in_progress_key_prefix + job.job_id)
        assert (w.in_progress_timeout_s - 1) * 1000 < ttl <= w.in_progress_timeout_s * 1000
        assert int(await pool.get(retry_key_prefix + job.job_id)) == 1
        assert 88_000 < await pool.ttl(retry_key_prefix + job.job_id) <= 88_400
        assert await job.status() == JobStatus.in_progress
        assert await job.result(timeout=5) == "slept"
    finally:
        main.cancel()
        await asyncio.gather(main, return_exceptions=True)
        await w.close()


@pytest.mark.parametrize("second", [Worker, FastWorker], ids=["then-arq-worker", "then-fastworker"])
async def test_shutdown_mid_job_puts_it_back_and_it_runs_again(second, pool, arq_redis, tk_prefix):
    q = f"{tk_prefix}q"
    job = await pool.enqueue_job("slow_first_try", 30, _job_id=f"{tk_prefix}long")
    w = _worker(FastWorker, arq_redis, q)
    main = asyncio.create_task(w.async_run())
    await wait_until(lambda: EXECUTIONS[job.job_id] == 1, within=5)
    await w.close()  # handle_signals=False: close() cancels the running job, as ARQ does on SIGTERM
    main.cancel()
    await asyncio.gather(main, return_exceptions=True)
    assert w.jobs_retried == 1 and w.jobs_complete == 0
    # ARQ's rule: a cancelled job stays queued without its in-progress key, so any worker runs it again
    assert await pool.zscore(q, job.job_id) is not None
    assert not await pool.exists(in_progress_key_prefix + job.job_id)
    assert await pool.exists(job_key_prefix + job.job_id)
    w2 = _worker(second, arq_redis, q, burst=True)
    await w2.async_run()
    await w2.close()
    assert EXECUTIONS[job.job_id] == 2
    info = await job.result_info()
    assert info is not None and info.success and info.result == "try 2" and info.job_try == 2


async def test_abort_support_falls_back_to_arq_loop(pool, arq_redis, tk_prefix):
    q = f"{tk_prefix}q"
    jobs = [await pool.enqueue_job("work", i, _job_id=f"{tk_prefix}a{i}") for i in range(5)]
    w = _worker(FastWorker, arq_redis, q, burst=True, allow_abort_jobs=True)
    await w.async_run()
    await w.close()
    assert w.claims == 0 and w.jobs_complete == 5  # ARQ's own loop and finish_job ran
    assert [await j.result(timeout=1) for j in jobs] == [0, 2, 4, 6, 8]


async def test_max_burst_jobs_and_create_worker(pool, arq_redis, tk_prefix):
    q = f"{tk_prefix}q"
    for i in range(30):
        await pool.enqueue_job("work", i, _job_id=f"{tk_prefix}b{i}")
    settings = {"functions": FUNCS, "queue_name": q, "redis_settings": arq_redis, "max_jobs": 8,
                "poll_delay": 0.01, "not_a_worker_arg": 1}
    w = create_worker(settings, burst=True, handle_signals=False, max_burst_jobs=12)
    assert type(w) is FastWorker
    assert type(create_worker(settings, fast=False, handle_signals=False)) is Worker
    await w.async_run()
    await w.close()
    assert w.jobs_complete == 12
    assert await pool.zcard(q) == 18


def test_importing_with_another_arq_version_fails_naming_both_copies():
    import importlib.metadata

    from taskkit.fastworker import ARQ_VERSION, check_arq_version

    assert importlib.metadata.version("arq") == ARQ_VERSION  # what this suite runs on
    check_arq_version(ARQ_VERSION)
    with pytest.raises(RuntimeError) as err:
        check_arq_version("0.29.0")
    msg = str(err.value)
    assert "arq 0.29.0 is installed" in msg
    assert "FastWorker._run_claimed" in msg and "Worker.run_job" in msg
    assert "FastWorker.close" in msg and "Worker.close" in msg
    # and the check really runs at import: a fresh interpreter that reports another ARQ cannot import it
    code = ("import importlib.metadata as m; real = m.version; "
            "m.version = lambda name: '0.29.0' if name == 'arq' else real(name); import taskkit.fastworker")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "arq 0.29.0 is installed" in proc.stderr and "FastWorker._run_claimed" in proc.stderr, proc.stderr[-2000:]
