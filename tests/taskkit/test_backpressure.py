"""Backpressure against real Redis: the enqueue script agrees with the pure hysteresis rule, an
overloaded queue stays bounded without losing accepted jobs, and the AIMD limit is shared."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from taskkit import AimdController, Producer, QueueFull, Watermarks
from taskkit.backpressure import admit, admit_many
from taskkit.keys import Keys
from taskkit.producer import JobSpec
from tests.taskkit import app_worker
from tests.taskkit.harness import ROOT, start_app_worker


async def _set_depth(redis, queue_key: str, depth: int) -> None:
    await redis.delete(queue_key)
    if depth:
        now = int(time.time() * 1000) - 1000
        await redis.zadd(queue_key, {f"filler-{i}": now for i in range(depth)})


async def test_enqueue_script_agrees_with_admit(redis, tk_prefix):
    wm = Watermarks(high=10, low=4, min_retry_after_s=0.5, max_retry_after_s=30)
    prod = Producer(redis, prefix=tk_prefix, watermarks=wm)
    k = Keys(tk_prefix)
    closed = False
    for depth in [0, 3, 9, 10, 12, 9, 5, 4, 5, 9, 10, 3, 11]:
        await _set_depth(redis, k.arq_queue("bp"), depth)
        want_accept, closed = admit(closed, depth, 0, wm)
        try:
            await prod.enqueue("noop", _queue="bp")
            accepted = True
        except QueueFull as exc:
            accepted = False
            assert exc.queue == "bp" and exc.depth == depth and 0.5 <= exc.retry_after <= 30
        assert accepted == want_accept, depth
        assert (await redis.hget(k.backpressure("bp"), "closed") == b"1") == closed, depth


def test_admit_many_whole_request_with_the_same_hysteresis():
    wm = Watermarks(high=10, low=4)
    assert admit_many(False, 6, 4, 0, wm) == (True, False)  # 6 + 4 = 10 fits exactly
    assert admit_many(False, 7, 4, 0, wm) == (False, False)  # too big: refused, but the queue stays open
    assert admit_many(False, 7, 3, 0, wm) == (True, False)  # so a smaller one passes
    assert admit_many(False, 10, 1, 0, wm) == (False, True)  # full: closes
    assert admit_many(True, 5, 1, 0, wm) == (False, True)  # closed until low
    assert admit_many(True, 4, 6, 0, wm) == (True, False)  # at low: open, and 4 + 6 fits
    assert admit_many(True, 4, 7, 0, wm) == (False, False)  # open again, but this one is too big
    assert admit_many(False, 0, 11, 0, wm) == (False, False)  # more than high never fits
    aged = Watermarks(high=10, low=4, max_age_s=30)
    assert admit_many(False, 1, 1, 31, aged) == (False, True)
    assert admit_many(True, 1, 5, 29, aged) == (True, False)


def test_admit_is_admit_many_of_one():
    wm = Watermarks(high=10, low=4, max_age_s=30)
    for closed in (False, True):
        for depth in range(0, 14):
            for age in (0, 29, 30, 31):
                assert admit(closed, depth, age, wm) == admit_many(closed, depth, 1, age, wm)


async def test_enqueue_many_script_agrees_with_admit_many(redis, tk_prefix):
    wm = Watermarks(high=10, low=4, min_retry_after_s=0.5, max_retry_after_s=30)
    prod = Producer(redis, prefix=tk_prefix, watermarks=wm)
    k = Keys(tk_prefix)
    closed = False
    steps = [(0, 10), (1, 10), (3, 7), (3, 8), (9, 1), (9, 2), (10, 1), (8, 1), (5, 2), (4, 7), (4, 6),
             (7, 3), (10, 1), (2, 9), (2, 8), (11, 1), (4, 1)]
    for depth, n in steps:
        await _set_depth(redis, k.arq_queue("bp"), depth)
        want_accept, closed = admit_many(closed, depth, n, 0, wm)
        try:
            r = await prod.enqueue_many("noop", [JobSpec()] * n, queue="bp")
            accepted = True
            assert r.accepted == n
        except QueueFull as exc:
            accepted = False
            assert exc.queue == "bp" and exc.depth == depth and 0.5 <= exc.retry_after <= 30
        assert accepted == want_accept, (depth, n)
        assert await redis.zcard(k.arq_queue("bp")) == depth + (n if accepted else 0), (depth, n)
        assert (await redis.hget(k.backpressure("bp"), "closed") == b"1") == closed, (depth, n)


async def test_retry_after_uses_the_workers_drain_rate(redis, tk_prefix):
    wm = Watermarks(high=100, low=50, min_retry_after_s=1, max_retry_after_s=60)
    prod = Producer(redis, prefix=tk_prefix, watermarks=wm)
    k = Keys(tk_prefix)
    await _set_depth(redis, k.arq_queue("bp"), 150)
    await redis.hset(k.backpressure("bp"), "rate", "20")  # written by the workers' health loop
    with pytest.raises(QueueFull) as e:
        await prod.enqueue("noop", _queue="bp")
    assert e.value.retry_after == pytest.approx(5.0, abs=0.01)  # (150 - 50) / 20


async def test_overload_depth_bounded_nothing_accepted_lost(redis, redis_url, tk_prefix, tmp_path):
    """Producer at 10x the worker's rate for 3 s: depth <= high + in-flight enqueues; all accepted run."""
    high, low, producers = 60, 30, 8
    wm = Watermarks(high=high, low=low, min_retry_after_s=0.05, max_retry_after_s=10)
    prod = Producer(redis, prefix=tk_prefix, watermarks=wm)
    k = Keys(tk_prefix)
    qkey = k.arq_queue("app")
    # worker: 4 concurrent jobs of 40 ms → at most 100 jobs/s; the producer aims at 1,000/s.
    log = (tmp_path / "worker.log").open("wb")
    proc = start_app_worker(redis_url, tk_prefix, log, concurrency=4, sleep_s=0.04)
    accepted: list[str] = []
    rejections: list[float] = []
    max_depth = 0
    stop = asyncio.Event()

    async def sampler():
        nonlocal max_depth
        while not stop.is_set():
            max_depth = max(max_depth, await redis.zcard(qkey))
            await asyncio.sleep(0.002)

    async def producer(offset: int):
        n = offset
        t_next = time.monotonic()
        while not stop.is_set():
            try:
                job = await prod.enqueue(app_worker.apply_effect, n, 1)
                accepted.append(job.job_id)
            except QueueFull as exc:
                rejections.append(exc.retry_after)
            n += producers
            t_next += producers / 1000  # 1,000 enqueues/s across all producers
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))

    try:
        s = asyncio.create_task(sampler())
        ps = [asyncio.create_task(producer(i)) for i in range(producers)]
        await asyncio.sleep(3.0)
        stop.set()
        await asyncio.gather(s, *ps)
        done_in_window = await redis.scard(f"{tk_prefix}ledger")
        attempts = len(accepted) + len(rejections)
        # drain: everything accepted must run, exactly once
        deadline = time.monotonic() + 30
        while await redis.scard(f"{tk_prefix}ledger") < len(accepted):
            assert time.monotonic() < deadline, "accepted jobs were lost"
            assert proc.poll() is None
            await asyncio.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    done = {m.decode() for m in await redis.smembers(f"{tk_prefix}ledger")}
    assert done == set(accepted)
    assert int(await redis.get(f"{tk_prefix}total")) == len(accepted)
    assert attempts >= 1000, attempts
    assert attempts >= 8 * done_in_window, (attempts, done_in_window)  # ~10x what the worker managed
    assert len(accepted) < attempts / 3  # most were refused
    assert rejections and all(ra > 0 for ra in rejections)
    assert max_depth <= high + producers, max_depth
    assert max_depth >= low  # and the queue really filled up


class _Peer:
    """The AIMD controller of another process (tests/taskkit/aimd_peer.py), one command at a time."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def reply(self) -> float:
        out = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        assert out, "the peer process died"
        return float(out)

    async def __call__(self, line: str) -> float:
        await self.send(line)
        return await self.reply()


async def test_aimd_limit_is_shared_between_processes(redis, redis_url, tk_prefix):
    from tests.taskkit.aimd_peer import POLICY as policy

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.taskkit.aimd_peer", redis_url, tk_prefix, cwd=ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ready\n"
        b = _Peer(proc)  # another worker process, same Redis
        a = AimdController(redis, "milvus", keys=Keys(tk_prefix), policy=policy)
        assert await a.current() == 100
        assert await a.slow_down() == 50
        assert await b("slow_down") == 50  # within the cooldown: a burst of signals counts once
        assert await b("current") == 50
        await asyncio.sleep(0.55)
        assert await b("slow_down") == 25
        assert await a.current() == 25
        await asyncio.sleep(0.55)
        assert await a.slow_down() == 20  # floor
        # additive increase: +10/s for the time since the last change, applied at most once a second
        await asyncio.sleep(1.0)
        grown = await b("ok")
        assert 30 <= grown <= 40, grown
        assert await a.ok() == grown  # a second ok within the second: no change
        # one token bucket for both: each process takes `grown` calls at once, twice what one burst holds,
        # so together they wait about grown / limit = 1 s (two separate buckets would not wait at all)
        n = int(grown)
        t0 = time.monotonic()
        await b.send(f"acquire {n}")
        for _ in range(n):
            await a.acquire()
        await b.reply()
        assert time.monotonic() - t0 >= 0.8 * (2 * n - grown) / grown
    finally:
        if proc.returncode is None:
            proc.stdin.close()
            await asyncio.wait_for(proc.wait(), 10)
