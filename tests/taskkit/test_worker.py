"""Against real Redis and real ARQ workers: retries with backoff, dead-lettering, requeue, long retries,
idempotency, timeouts, the death hook and the dead-letter bounds."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from arq.jobs import Job

from taskkit import (
    DeadLetterPolicy,
    Inspector,
    PermanentError,
    Producer,
    RetryPolicy,
    TransientError,
    task,
    worker_settings,
)
from taskkit.keys import Keys
from tests.taskkit.harness import running_worker, wait_until

# every test here runs on ARQ's own Worker and on taskkit's FastWorker
pytestmark = pytest.mark.usefixtures("worker_kind")

Q = "tkq"
RUNS: dict[str, list[tuple[int, float]]] = {}


def _record(ctx) -> int:
    RUNS.setdefault(ctx["job_id"], []).append((ctx["attempt"], time.monotonic()))
    return len(RUNS[ctx["job_id"]])


@task(queue=Q, retry=RetryPolicy(max_attempts=5, base_s=0.2, cap_s=5, jitter="none"))
async def flaky(ctx, fail_times: int) -> str:
    n = _record(ctx)
    if n <= fail_times:
        raise TransientError(f"downstream hiccup #{n}")
    return f"ok after {n}"


@task(queue=Q, retry=RetryPolicy(max_attempts=5, base_s=0.05, jitter="none"))
async def broken(ctx, doc: dict) -> None:
    _record(ctx)
    raise PermanentError(f"document {doc['id']} has no text field")


@task(queue=Q, retry=RetryPolicy(max_attempts=3, base_s=0.05, cap_s=0.1, jitter="none"))
async def always_down(ctx) -> None:
    _record(ctx)
    raise ConnectionError("downstream refused the connection")


@task(queue=Q, retry=RetryPolicy(max_attempts=3, cap_s=10 * 86400))
async def far_retry(ctx) -> None:
    _record(ctx)
    raise TransientError("come back in two days", retry_after=2 * 86400)


@task(queue=Q, idempotency_key=lambda doc_id, version: f"{doc_id}:{version}")
async def index_doc(ctx, doc_id: str, version: int) -> str:
    _record(ctx)
    return f"{doc_id}@{version}"


@task(queue=Q, timeout=0.2, retry=RetryPolicy(max_attempts=2, base_s=0.05, jitter="none"))
async def slow(ctx) -> None:
    _record(ctx)
    await asyncio.sleep(5)


def settings(redis_url, prefix, **kw):
    from taskkit import redis_settings_from_url

    kw.setdefault("health_interval_s", 0.5)
    return worker_settings(Q, [flaky, broken, always_down, far_retry, index_doc, slow],
                           redis_settings=redis_settings_from_url(redis_url), prefix=prefix, concurrency=8, **kw)


async def _result(redis, job_id: str):
    return await Job(job_id, redis).result_info()


async def test_transient_failure_retries_with_growing_delays_then_succeeds(redis, redis_url, tk_prefix):
    prod = Producer(redis, prefix=tk_prefix)
    ins = Inspector(redis, prefix=tk_prefix)
    job = await prod.enqueue(flaky, 3)
    assert job.created
    async with running_worker(settings(redis_url, tk_prefix)):
        # While it waits for attempt 2, the retry queue shows it with its error and next run.
        await wait_until(lambda: len(RUNS.get(job.job_id, [])) >= 1)
        await wait_until(lambda: ins.count("retry"), within=5)
        rec = (await ins.list("retry"))[0]
        assert rec.job_id == job.job_id and rec.task == "flaky" and rec.args == [3]
        assert rec.error_type == "TransientError" and "hiccup #1" in rec.message
        assert "Traceback" in rec.traceback and "raise TransientError" in rec.traceback
        assert rec.next_run_ms and rec.next_run_ms > rec.last_failed_ms
        await wait_until(lambda: len(RUNS.get(job.job_id, [])) == 4, within=10)
        await wait_until(lambda: _result(redis, job.job_id), within=5)
    runs = RUNS[job.job_id]
    assert [a for a, _ in runs] == [1, 2, 3, 4]
    gaps = [b[1] - a[1] for a, b in itertools.pairwise(runs)]
    # base 0.2 s, no jitter: 0.2, 0.4, 0.8 s (+ polling latency)
    for gap, want in zip(gaps, [0.2, 0.4, 0.8], strict=True):
        assert want - 0.02 <= gap <= want + 0.5, gaps
    assert gaps[0] < gaps[1] < gaps[2]
    result = await _result(redis, job.job_id)
    assert result.success and result.result == "ok after 4"
    assert await ins.count("retry") == 0 and await ins.count("dead") == 0


async def test_permanent_failure_goes_straight_to_dlq_with_traceback(redis, redis_url, tk_prefix):
    prod = Producer(redis, prefix=tk_prefix)
    ins = Inspector(redis, prefix=tk_prefix)
    job = await prod.enqueue(broken, {"id": "d-17"})
    async with running_worker(settings(redis_url, tk_prefix)):
        await wait_until(lambda: ins.count("dead"), within=5)
    assert len(RUNS[job.job_id]) == 1  # no retry
    rec = await ins.show("dead", job.job_id)
    assert rec.queue == Q and rec.task == "broken" and rec.args == [{"id": "d-17"}]
    assert rec.error_type == "PermanentError" and rec.error_kind == "permanent" and rec.reason == "permanent"
    assert "d-17 has no text field" in rec.message
    assert "Traceback (most recent call last)" in rec.traceback and "in broken" in rec.traceback
    assert rec.attempts == 1 and rec.first_failed_ms and rec.died_ms and rec.first_failed_ms <= rec.died_ms
    assert await ins.count("retry") == 0
    result = await _result(redis, job.job_id)
    assert result is not None and not result.success  # ARQ's own record says failed too


async def test_exhaustion_dead_letters(redis, redis_url, tk_prefix):
    prod = Producer(redis, prefix=tk_prefix)
    ins = Inspector(redis, prefix=tk_prefix)
    job = await prod.enqueue(always_down)
    async with running_worker(settings(redis_url, tk_prefix)):
        await wait_until(lambda: ins.count("dead"), within=10)
    assert [a for a, _ in RUNS[job.job_id]] == [1, 2, 3]
    rec = await ins.show("dead", job.job_id)
    assert rec.reason == "exhausted" and rec.attempts == 3 and rec.error_type == "ConnectionError"
    assert rec.first_failed_ms < rec.last_failed_ms  # first failure carried over from the retry record
    assert await ins.count("retry") == 0
    stats = (await ins.stats(Q))[0]
    assert stats.retried == 2 and stats.died == 1


async def test_requeue_from_dlq_runs_again_with_fresh_attempts(redis, redis_url, tk_prefix):
    prod = Producer(redis, prefix=tk_prefix)
    ins = Inspector(redis, prefix=tk_prefix, user="alice")
    job = await prod.enqueue(always_down)
    async with running_worker(settings(redis_url, tk_prefix)):
        await wait_until(lambda: ins.count("dead"), within=10)
        assert len(RUNS[job.job_id]) == 3
        res = await ins.requeue("dead", ins_filter(job.job_id))
        assert res.count == 1 and res.job_ids == [job.job_id]
        assert await ins.count("dead") == 0
        await wait_until(lambda: ins.count("dead"), within=10)
    runs = RUNS[job.job_id]
    assert [a for a, _ in runs] == [1, 2, 3, 1, 2, 3]  # ran again, attempts counted afresh
    audit = await ins.audit()
    assert audit[0]["who"] == "alice" and audit[0]["action"] == "dead.requeue" and audit[0]["count"] == 1


def ins_filter(*ids):
    from taskkit import Filter

    return Filter(job_ids=tuple(ids))


async def test_retry_more_than_a_day_ahead_keeps_its_keys(redis, redis_url, tk_prefix):
    prod = Producer(redis, prefix=tk_prefix, job_ttl_s=3600)  # job key starts with a 1 h TTL
    ins = Inspector(redis, prefix=tk_prefix)
    k = Keys(tk_prefix)
    job = await prod.enqueue(far_retry)
    assert await redis.pttl(k.job(job.job_id)) <= 3600_000
    two_days_ms = 2 * 86400 * 1000

    async def attempt_ended() -> bool:
        # ARQ has written the attempt's end: in-progress key gone, the job re-scored two days ahead
        score = await redis.zscore(k.arq_queue(Q), job.job_id)
        return (not await redis.exists(k.in_progress(job.job_id)) and score is not None
                and score >= time.time() * 1000 + two_days_ms - 60_000)

    async with running_worker(settings(redis_url, tk_prefix)):
        await wait_until(lambda: ins.count("retry"), within=5)
        await wait_until(attempt_ended, within=5)
    now_ms = time.time() * 1000
    # The job key had 1 h and ARQ's try counter 88,400 s; both now outlive the retry.
    assert await redis.pttl(k.job(job.job_id)) > two_days_ms
    assert await redis.pttl(k.arq_retry(job.job_id)) > two_days_ms
    assert int(await redis.get(k.arq_retry(job.job_id))) == 1
    assert await redis.pttl(k.retry_record(Q, job.job_id)) > two_days_ms
    rec = (await ins.list("retry"))[0]
    assert rec.next_run_ms >= now_ms + two_days_ms - 60_000


async def test_idempotency_queued_and_recent_are_noops(redis, redis_url, tk_prefix):
    prod = Producer(redis, prefix=tk_prefix, idempotency_window_s=1.0)
    a = await prod.enqueue(index_doc, "m1", 3)
    b = await prod.enqueue(index_doc, "m1", 3)
    assert a.created and a.state == "created"
    assert not b.created and b.state == "queued" and b.job_id == a.job_id
    other = await prod.enqueue(index_doc, "m1", 4)
    assert other.created
    async with running_worker(settings(redis_url, tk_prefix, idempotency_window_s=1.0)):
        await wait_until(lambda: _result(redis, a.job_id), within=5)
        c = await prod.enqueue(index_doc, "m1", 3)
        assert not c.created and c.state == "recent" and c.job_id == a.job_id
        await asyncio.sleep(1.1)  # the window is a setting of its own, not ARQ's keep_result (1 h here)
        d = await prod.enqueue(index_doc, "m1", 3)
        assert d.created
        await wait_until(lambda: len(RUNS.get(a.job_id, [])) == 2, within=5)


async def test_timeout_is_transient_then_dead_letters(redis, redis_url, tk_prefix):
    prod = Producer(redis, prefix=tk_prefix)
    ins = Inspector(redis, prefix=tk_prefix)
    job = await prod.enqueue(slow)
    async with running_worker(settings(redis_url, tk_prefix)):
        await wait_until(lambda: ins.count("dead"), within=10)
    rec = await ins.show("dead", job.job_id)
    assert rec.error_type == "TimeoutError" and rec.reason == "exhausted" and rec.attempts == 2


async def test_death_hook_and_dlq_bounds(redis, redis_url, tk_prefix):
    prod = Producer(redis, prefix=tk_prefix)
    ins = Inspector(redis, prefix=tk_prefix)
    died = []
    jobs = [await prod.enqueue(broken, {"id": f"d{i}"}) for i in range(5)]
    cls = settings(redis_url, tk_prefix, on_death=died.append, dead_letter=DeadLetterPolicy(max_count=3))
    async with running_worker(cls):
        await wait_until(lambda: len(died) == 5, within=10)
    assert {r.job_id for r in died} == {j.job_id for j in jobs}
    assert all(r.error_type == "PermanentError" for r in died)
    assert await ins.count("dead") == 3  # bounded by count: the oldest two were trimmed
    # age bound: everything older than 0 s goes on the next trim
    from taskkit.deadletter import DeadLetterQueue

    dlq = DeadLetterQueue(redis, Keys(tk_prefix), DeadLetterPolicy(max_age_s=0.001))
    await asyncio.sleep(0.01)
    assert await dlq.trim(Q) == 3 and await ins.count("dead") == 0
    assert not [k async for k in redis.scan_iter(match=Keys(tk_prefix).dlq_record_prefix(Q) + "*")]


async def test_worker_trims_old_dead_letters_on_its_own(redis, redis_url, tk_prefix):
    # The age bound is applied by the worker's health loop, not only when another job dies: after the last
    # death nothing is added, so only the periodic trim can empty the queue.
    prod = Producer(redis, prefix=tk_prefix)
    ins = Inspector(redis, prefix=tk_prefix)
    died = []
    jobs = [await prod.enqueue(broken, {"id": f"old{i}"}) for i in range(3)]
    max_age_s = 1.5
    cls = settings(redis_url, tk_prefix, on_death=died.append, dead_letter=DeadLetterPolicy(max_age_s=max_age_s),
                   health_interval_s=0.2)
    async with running_worker(cls):
        await wait_until(lambda: len(died) == 3, within=10)
        last_death_s = max(r.died_ms for r in died) / 1000
        assert {r.job_id for r in await ins.list("dead")} == {j.job_id for j in jobs}  # kept while young

        async def emptied() -> bool:
            return await ins.count("dead") == 0

        await wait_until(emptied, within=max_age_s + 10)
        emptied_s = time.time()
    assert emptied_s >= last_death_s + max_age_s - 0.05  # trimmed for their age, not at once
    assert not [k async for k in redis.scan_iter(match=Keys(tk_prefix).dlq_record_prefix(Q) + "*")]


async def test_explicit_long_idempotency_key_and_death_frees_the_key(redis, redis_url, tk_prefix):
    prod = Producer(redis, prefix=tk_prefix)
    long_key = "upload:" + "x" * 200  # stored hashed in the job id and marker
    a = await prod.enqueue("flaky", 0, _queue=Q, _idempotency_key=long_key)
    assert a.created and len(a.job_id) < 120
    dead = await prod.enqueue(broken, {"id": "p"}, _idempotency_key="doc-p")
    async with running_worker(settings(redis_url, tk_prefix)):
        await wait_until(lambda: _result(redis, a.job_id), within=5)
        await wait_until(lambda: _result(redis, dead.job_id), within=5)
        again = await prod.enqueue("flaky", 0, _queue=Q, _idempotency_key=long_key)
        assert not again.created and again.state == "recent" and again.job_id == a.job_id
        # a dead-lettered job does not block the same work being submitted again
        retry = await prod.enqueue(broken, {"id": "p"}, _idempotency_key="doc-p")
        assert retry.created and retry.job_id == dead.job_id
