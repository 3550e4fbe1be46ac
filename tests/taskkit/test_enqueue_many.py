"""Producer.enqueue_many against real Redis and real workers: per-job idempotency (within a request and
across requests), one all-or-nothing watermark decision with enqueue's hysteresis, one round trip, and
jobs that ARQ's Worker and FastWorker both run exactly once."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY

from taskkit import Producer, QueueFull, Watermarks, task, worker_settings
from taskkit.keys import Keys
from taskkit.producer import JobSpec
from taskkit.worker import redis_settings_from_url
from tests.taskkit.harness import running_worker, wait_until

Q = "manyq"
RUNS: dict[str, list[tuple]] = {}


@task(queue=Q, idempotency_key=lambda message_id, op, version: f"{message_id}:{op}:{version}")
async def index_event(ctx, message_id: str, op: str, version: int) -> str:
    RUNS.setdefault(ctx["job_id"], []).append((message_id, op, version))
    return f"{op} {message_id}@{version}"


@task(queue=Q)
async def keyless(ctx, n: int) -> int:
    RUNS.setdefault(ctx["job_id"], []).append((n,))
    return n


def ev(message_id: str, version: int = 1, op: str = "upsert") -> JobSpec:
    return JobSpec(args=(message_id, op, version))


def rejections(queue: str) -> float:
    return REGISTRY.get_sample_value("taskkit_backpressure_rejections_total", {"queue": queue}) or 0.0


async def _count(redis, pattern: str) -> int:
    return len([k async for k in redis.scan_iter(match=pattern, count=1000)])


async def _fill(redis, queue_key: str, n: int, start: int = 0) -> None:
    """Put `n` ready filler entries into the ARQ queue (they count towards depth, no worker runs them)."""
    now = int(time.time() * 1000) - 1000
    await redis.zadd(queue_key, {f"filler-{i}": now for i in range(start, start + n)})


class CountingRedis:
    """Counts the commands a client sends (every redis-py command goes through execute_command)."""

    def __init__(self, redis) -> None:
        self.commands: list[str] = []
        inner = redis.execute_command

        async def execute_command(*args, **options):
            self.commands.append(str(args[0]).upper())
            return await inner(*args, **options)

        redis.execute_command = execute_command


async def test_all_created_written_as_enqueue_writes_them(redis, tk_prefix):
    prod = Producer(redis, prefix=tk_prefix)
    k = Keys(tk_prefix)
    r = await prod.enqueue_many(index_event, [ev(f"m{i}") for i in range(20)])
    assert (r.queue, r.accepted, r.duplicates, len(r.jobs)) == (Q, 20, 0, 20)
    assert all(j.created and j.state == "created" for j in r.jobs)
    assert [j.job_id for j in r.jobs] == [k.idempotent_job_id(Q, f"m{i}:upsert:1") for i in range(20)]
    # the same keys enqueue writes: ARQ job key + queue entry, the marker, the queue name, the counter
    one = await prod.enqueue(index_event, "solo", "upsert", 1)
    for job_id in [j.job_id for j in r.jobs] + [one.job_id]:
        assert await redis.exists(k.job(job_id)) == 1
        assert await redis.zscore(k.arq_queue(Q), job_id) is not None
        assert 0 < await redis.pttl(k.job(job_id)) <= prod.job_ttl_s * 1000
        token = k.idem_token_of_job(Q, job_id)
        assert (await redis.get(k.idempotency(Q, token))).decode() == job_id
    assert await redis.zcard(k.arq_queue(Q)) == 21
    assert await redis.smembers(k.queues) == {Q.encode()}
    assert await redis.hget(k.stats(Q), "enqueued") == b"21"


async def test_duplicates_within_a_request_and_across_requests(redis, tk_prefix):
    prod = Producer(redis, prefix=tk_prefix)
    k = Keys(tk_prefix)
    a = await prod.enqueue_many(index_event, [ev("m1"), ev("m2"), ev("m1"), ev("m3"), ev("m2")])
    assert (a.accepted, a.duplicates) == (3, 2)
    assert [j.created for j in a.jobs] == [True, True, False, True, False]
    assert a.jobs[2].job_id == a.jobs[0].job_id and a.jobs[2].state == "queued"
    assert a.jobs[4].job_id == a.jobs[1].job_id
    b = await prod.enqueue_many(index_event, [ev("m2"), ev("m4"), ev("m1")])
    assert (b.accepted, b.duplicates) == (1, 2)
    assert [(j.created, j.state) for j in b.jobs] == [(False, "queued"), (True, "created"), (False, "queued")]
    assert b.jobs[0].job_id == a.jobs[1].job_id and b.jobs[2].job_id == a.jobs[0].job_id
    # a job enqueued one at a time is a duplicate for the batch too, and the other way round
    c = await prod.enqueue(index_event, "m4", "upsert", 1)
    assert not c.created and c.job_id == b.jobs[1].job_id
    d = await prod.enqueue_many(index_event, [(("m9", "upsert", 1), {}, None), (("x", "upsert", 1), {}, "explicit-key"),
                                              (("y", "upsert", 1), {}, "explicit-key")])
    assert (d.accepted, d.duplicates) == (2, 1)
    assert d.jobs[1].job_id == k.idempotent_job_id(Q, "explicit-key")
    assert await redis.zcard(k.arq_queue(Q)) == 6
    assert await redis.hget(k.stats(Q), "enqueued") == b"6"


async def test_an_edit_or_a_delete_is_not_a_duplicate(redis, tk_prefix):
    prod = Producer(redis, prefix=tk_prefix)
    await prod.enqueue_many(index_event, [ev("m1", 3)])
    r = await prod.enqueue_many(index_event, [ev("m1", 3), ev("m1", 4), ev("m1", 4, op="delete")])
    assert [(j.created, j.state) for j in r.jobs] == [(False, "queued"), (True, "created"), (True, "created")]
    assert len({j.job_id for j in r.jobs}) == 3


async def test_jobs_without_a_key_are_all_new(redis, tk_prefix):
    prod = Producer(redis, prefix=tk_prefix)
    r = await prod.enqueue_many(keyless, [((i,), {}, None) for i in range(5)] + [JobSpec((0,))])
    assert r.accepted == 6 and len({j.job_id for j in r.jobs}) == 6
    assert await _count(redis, f"{tk_prefix}idem:*") == 0  # no key, no marker


async def test_a_request_that_does_not_fit_whole_is_refused_entirely(redis, tk_prefix):
    wm = Watermarks(high=10, low=4, min_retry_after_s=0.5, max_retry_after_s=30)
    prod = Producer(redis, prefix=tk_prefix, watermarks=wm)
    k = Keys(tk_prefix)
    qkey = k.arq_queue(Q)
    await _fill(redis, qkey, 7)
    await redis.hset(k.backpressure(Q), "rate", "2")  # the workers' drain rate, from their health loop
    before = rejections(Q)
    with pytest.raises(QueueFull) as e:
        await prod.enqueue_many(index_event, [ev(f"m{i}") for i in range(4)])  # 7 + 4 > 10
    assert e.value.queue == Q and e.value.depth == 7
    assert e.value.retry_after == pytest.approx(1.5)  # (7 - 4) / 2, as enqueue estimates it
    assert await redis.zcard(qkey) == 7  # nothing half-enqueued
    assert await _count(redis, f"{tk_prefix}idem:*") == 0  # no marker written
    assert await _count(redis, f"arq:job:{tk_prefix}*") == 0
    assert rejections(Q) == before + 1
    assert await redis.hget(k.stats(Q), "rejected") == b"1"
    assert await redis.hget(k.stats(Q), "enqueued") is None
    assert await redis.hget(k.backpressure(Q), "closed") in (None, b"0")  # too big is not full
    # a smaller request fits (7 + 3 = 10), and the refused events are not remembered as duplicates
    r = await prod.enqueue_many(index_event, [ev(f"m{i}") for i in range(3)])
    assert r.accepted == 3 and await redis.zcard(qkey) == 10
    # duplicates need no room: a request of only duplicates is answered even at the limit
    again = await prod.enqueue_many(index_event, [ev("m0"), ev("m2")])
    assert (again.accepted, again.duplicates) == (0, 2)


async def test_hysteresis_after_a_refusal_closed_until_low(redis, tk_prefix):
    wm = Watermarks(high=10, low=4, min_retry_after_s=0.5, max_retry_after_s=30)
    prod = Producer(redis, prefix=tk_prefix, watermarks=wm)
    k = Keys(tk_prefix)
    qkey = k.arq_queue(Q)
    await _fill(redis, qkey, 10)
    with pytest.raises(QueueFull) as e:  # depth reached high: the queue closes
        await prod.enqueue_many(index_event, [ev("a")])
    assert e.value.depth == 10 and 0.5 <= e.value.retry_after <= 30
    assert await redis.hget(k.backpressure(Q), "closed") == b"1"
    for depth in (9, 6, 5):  # below high but above low: still closed, even for one job
        await redis.zremrangebyrank(qkey, 0, await redis.zcard(qkey) - depth - 1)
        with pytest.raises(QueueFull):
            await prod.enqueue_many(index_event, [ev("a")])
        assert await redis.zcard(qkey) == depth
    await redis.zremrangebyrank(qkey, 0, 0)  # depth 4 = low: open again
    r = await prod.enqueue_many(index_event, [ev(f"b{i}") for i in range(6)])  # 4 + 6 = 10 fits
    assert r.accepted == 6 and await redis.hget(k.backpressure(Q), "closed") == b"0"
    # the single-job enqueue sees the same state: the queue is at high now, so it closes for both
    with pytest.raises(QueueFull):
        await prod.enqueue(index_event, "c", "upsert", 1)
    with pytest.raises(QueueFull):
        await prod.enqueue_many(index_event, [ev("c")])


async def test_concurrent_requests_never_overshoot_high(redis, tk_prefix):
    prod = Producer(redis, prefix=tk_prefix, watermarks=Watermarks(high=100, low=50))
    batches = [[ev(f"p{p}-m{i}") for i in range(30)] for p in range(10)]
    results = await asyncio.gather(*(prod.enqueue_many(index_event, b) for b in batches), return_exceptions=True)
    admitted = [r for r in results if not isinstance(r, BaseException)]
    assert len(admitted) == 3 and all(r.accepted == 30 for r in admitted)
    assert all(isinstance(r, QueueFull) for r in results if isinstance(r, BaseException))
    assert await redis.zcard(Keys(tk_prefix).arq_queue(Q)) == 90


async def test_backpressure_off_and_a_request_that_can_never_fit(redis, tk_prefix):
    prod = Producer(redis, prefix=tk_prefix, watermarks=Watermarks(high=5, low=2))
    k = Keys(tk_prefix)
    with pytest.raises(ValueError, match="can never fit"):
        await prod.enqueue_many(index_event, [ev(f"m{i}") for i in range(6)])
    assert await redis.exists(k.arq_queue(Q)) == 0
    r = await prod.enqueue_many(index_event, [ev(f"m{i}") for i in range(6)], backpressure=False)
    assert r.accepted == 6 and await redis.zcard(k.arq_queue(Q)) == 6
    assert (await prod.enqueue_many(index_event, [])).jobs == ()
    with pytest.raises(TypeError, match="a job is"):
        await prod.enqueue_many(index_event, [("m1", "upsert", 1)])  # args not wrapped in a tuple


async def test_one_round_trip_for_a_thousand_jobs_then_each_runs_once(redis, redis_url, tk_prefix, worker_kind):
    RUNS.clear()
    prod = Producer(redis, prefix=tk_prefix, watermarks=Watermarks(high=2000, low=1000))
    await prod.enqueue_many(index_event, [ev("warm-up")])  # loads the script, so NOSCRIPT cannot add a trip
    counter = CountingRedis(redis)
    events = [ev(f"m{i}", version=i % 3) for i in range(1000)]
    r = await prod.enqueue_many(index_event, events)
    assert counter.commands == ["EVALSHA"]
    assert (r.accepted, r.duplicates) == (1000, 0)
    assert await redis.zcard(Keys(tk_prefix).arq_queue(Q)) == 1001
    settings = worker_settings(Q, [index_event, keyless], redis_settings=redis_settings_from_url(redis_url),
                               prefix=tk_prefix, concurrency=50, health_interval_s=0.5)
    async with running_worker(settings):
        await wait_until(lambda: len(RUNS) == 1001, within=60)
        await asyncio.sleep(0.3)  # a second execution of any job would show up here
    assert all(len(runs) == 1 for runs in RUNS.values())  # the warm-up job and the 1,000, once each
    for spec, job in zip(events, r.jobs, strict=True):
        assert RUNS[job.job_id] == [spec.args]
    # done now: within the idempotency window the same request is all duplicates ("recent")
    again = await prod.enqueue_many(index_event, events[:10])
    assert again.accepted == 0 and {j.state for j in again.jobs} == {"recent"}
    assert [j.job_id for j in again.jobs] == [j.job_id for j in r.jobs[:10]]
