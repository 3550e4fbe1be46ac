"""Batching: flush rules, whole-batch transient retry, AIMD signals, and poison isolation on a real
worker (64 jobs, 2 poison → 62 succeed, exactly 2 dead-lettered, at most 25 downstream calls)."""

from __future__ import annotations

import asyncio
import time

import pytest
from arq.jobs import Job

from taskkit import (
    AimdController,
    AimdPolicy,
    Batcher,
    Inspector,
    PermanentError,
    Producer,
    RateLimited,
    RetryPolicy,
    TransientError,
    task,
    worker_settings,
)
from taskkit.keys import Keys
from taskkit.worker import redis_settings_from_url
from tests.taskkit.harness import running_worker, wait_until


def _recorder(fail=None):
    calls: list[list] = []

    async def call(items):
        calls.append(list(items))
        if fail is not None:
            exc = fail(len(calls), items)
            if exc is not None:
                raise exc
        return [f"r{i}" for i in items]

    return calls, call


async def test_flush_on_count():
    calls, call = _recorder()
    b = Batcher(call, max_items=4, linger_s=10)
    out = await asyncio.gather(*(b.submit(i) for i in range(8)))
    assert out == [f"r{i}" for i in range(8)] and [len(c) for c in calls] == [4, 4]


async def test_submit_many_gives_per_item_outcomes():
    calls: list[list] = []

    async def picky(items):
        calls.append(list(items))
        return [ValueError(f"bad {i}") if i % 5 == 0 else i * 2 for i in items]

    b = Batcher(picky, max_items=8, linger_s=0.01)
    a, c = await asyncio.gather(b.submit_many(list(range(1, 7))), b.submit_many(list(range(7, 11))))
    assert [o.value for o in a if o.ok] == [2, 4, 6, 8, 12] and not a[4].ok and "bad 5" in str(a[4].error)
    assert [o.ok for o in c] == [True, True, True, False]
    assert [len(x) for x in calls] == [8, 2]  # items of two jobs shared one batch


async def test_flush_on_bytes():
    calls, call = _recorder()
    b = Batcher(call, max_items=100, max_bytes=10, linger_s=10)
    out = await asyncio.gather(*(b.submit(s) for s in ["aaaa", "bbbb", "cc", "dddd", "ee", "ffff"]))
    assert len(out) == 6 and [len(c) for c in calls] == [3, 3]  # 4+4+2 ≥ 10, then 4+2+4 ≥ 10


async def test_flush_on_linger():
    calls, call = _recorder()
    b = Batcher(call, max_items=100, linger_s=0.05)
    t0 = time.monotonic()
    out = await asyncio.gather(*(b.submit(i) for i in range(3)))
    assert out == ["r0", "r1", "r2"] and len(calls) == 1
    assert 0.04 <= time.monotonic() - t0 < 0.5


async def test_transient_batch_error_retries_whole_batch():
    calls, call = _recorder(lambda n, items: TransientError("busy") if n <= 2 else None)
    b = Batcher(call, max_items=8, linger_s=0.01, retry=RetryPolicy(max_attempts=3, base_s=0.01, jitter="none"))
    out = await asyncio.gather(*(b.submit(i) for i in range(8)))
    assert out == [f"r{i}" for i in range(8)]
    assert [len(c) for c in calls] == [8, 8, 8]  # retried whole, never split


async def test_transient_exhausted_fails_each_item_transiently():
    calls, call = _recorder(lambda n, items: TransientError("down"))
    b = Batcher(call, max_items=4, linger_s=0.01, retry=RetryPolicy(max_attempts=2, base_s=0.01))
    out = await asyncio.gather(*(b.submit(i) for i in range(4)), return_exceptions=True)
    assert all(isinstance(o, TransientError) for o in out) and len(calls) == 2


async def test_rate_limited_slows_the_shared_aimd(redis, tk_prefix):
    aimd = AimdController(redis, "down", keys=Keys(tk_prefix), policy=AimdPolicy(initial=100, cooldown_s=0))
    calls, call = _recorder(lambda n, items: RateLimited("429", retry_after=0.01) if n == 1 else None)
    b = Batcher(call, max_items=2, linger_s=0.01, aimd=aimd, retry=RetryPolicy(max_attempts=3, base_s=0.01))
    assert await asyncio.gather(b.submit(1), b.submit(2)) == ["r1", "r2"]
    assert await aimd.current() == 50  # halved once by the 429
    assert len(calls) == 2  # and the batch was retried whole


POISON = {"poison-7", "poison-40"}
DOWNSTREAM_CALLS: list[int] = []


async def _embed_batch(items):
    """The downstream: 2 ms + 0.05 ms per item; a batch containing a poison item is rejected whole."""
    DOWNSTREAM_CALLS.append(len(items))
    await asyncio.sleep(0.002 + 0.00005 * len(items))
    bad = POISON & set(items)
    if bad:
        raise PermanentError(f"invalid document(s) in batch: {sorted(bad)}")
    return [f"vec:{i}" for i in items]


@task(queue="embed", retry=RetryPolicy(max_attempts=3, base_s=0.05))
async def embed(ctx, item: str) -> str:
    return await ctx["batcher"].submit(item)


@pytest.mark.usefixtures("worker_kind")
async def test_poison_isolation_64_with_2_poison(redis, redis_url, tk_prefix):
    DOWNSTREAM_CALLS.clear()
    items = [f"poison-{i}" if f"poison-{i}" in POISON else f"doc-{i}" for i in range(64)]
    prod = Producer(redis, prefix=tk_prefix)
    jobs = [await prod.enqueue(embed, it) for it in items]

    async def startup(ctx):
        ctx["batcher"] = Batcher(_embed_batch, name="embed", max_items=64, linger_s=3.0)

    cls = worker_settings("embed", [embed], redis_settings=redis_settings_from_url(redis_url), prefix=tk_prefix,
                          concurrency=64, on_startup=startup)
    ins = Inspector(redis, prefix=tk_prefix)

    async def all_finished():
        rs = await asyncio.gather(*(Job(j.job_id, redis).result_info() for j in jobs))
        return all(r is not None for r in rs)

    async with running_worker(cls):
        await wait_until(all_finished, within=20)
    results = {j.job_id: await Job(j.job_id, redis).result_info() for j in jobs}
    ok = [jid for jid, r in results.items() if r.success]
    assert len(ok) == 62
    assert {results[j].result for j in ok} == {f"vec:{it}" for it in items if it not in POISON}
    dead = await ins.list("dead")
    assert len(dead) == 2 and {d.args[0] for d in dead} == POISON
    assert all(d.error_type == "PermanentError" and d.attempts == 1 for d in dead)
    assert DOWNSTREAM_CALLS[0] == 64  # one batch of all 64
    assert len(DOWNSTREAM_CALLS) <= 25, DOWNSTREAM_CALLS  # 1 + 2·k·log2(n) with k=2, n=64
