"""taskkit benchmarks: (a) no-op task throughput through taskkit vs plain ARQ, same Redis, same run;
(b) batched vs unbatched throughput for a task whose downstream call costs 2 ms + 0.05 ms per item.

Usage: python bench/taskkit_bench.py [--redis-url URL] [--repeats 5] [--jobs 3000]
Each figure is the median of the repeats; plain ARQ and taskkit runs alternate so drift hits both.
Every key it writes is under a fresh `bench:tk:<random>:` prefix (ARQ's own keys carry it in the job
id) and is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

from arq.connections import RedisSettings, create_pool
from arq.worker import Worker, create_worker
from redis.asyncio import Redis

from taskkit import Batcher, Producer, Watermarks, task, worker_settings
from taskkit.keys import Keys

DEFAULT_URL = os.environ.get("HOTPATH_REDIS_URL", "redis://127.0.0.1:6379/0")


# --- (a) no-op ------------------------------------------------------------------------------------
async def noop(ctx) -> None:
    return None


@task(queue="noop")
async def tk_noop(ctx) -> None:
    return None


CPU: dict[str, list[float]] = {"plain": [], "taskkit": []}


async def _drain(worker: Worker, label: str | None = None, n: int = 0) -> float:
    """Run a burst worker until its queue is empty; returns wall seconds (and records CPU µs/job)."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    await worker.async_run()
    dt = time.perf_counter() - t0
    if label:
        CPU[label].append((time.process_time() - c0) / n * 1e6)
    await worker.close()
    return dt


async def plain_arq(url: str, prefix: str, n: int, concurrency: int) -> tuple[float, float]:
    """Enqueue n jobs with ARQ's enqueue_job, then drain them with a burst ARQ worker. Returns rates/s."""
    q = f"{prefix}plain"
    pool = await create_pool(RedisSettings.from_dsn(url), default_queue_name=q)
    t0 = time.perf_counter()
    for i in range(n):
        await pool.enqueue_job("noop", _job_id=f"{prefix}plain:{i}")
    enq = n / (time.perf_counter() - t0)
    await pool.aclose()
    w = Worker([noop], queue_name=q, redis_settings=RedisSettings.from_dsn(url), burst=True,
               handle_signals=False, max_jobs=concurrency, poll_delay=0.01)
    dt = await _drain(w, "plain", n)
    assert w.jobs_complete == n, w.jobs_complete
    return enq, n / dt


async def through_taskkit(url: str, prefix: str, n: int, concurrency: int) -> tuple[float, float]:
    """The same through taskkit: Producer.enqueue (Lua: dedup + watermark) and a worker_settings worker."""
    redis = Redis.from_url(url)
    prod = Producer(redis, prefix=prefix, watermarks=Watermarks(high=10 * n, low=n))
    t0 = time.perf_counter()
    for _ in range(n):
        await prod.enqueue(tk_noop)
    enq = n / (time.perf_counter() - t0)
    await redis.aclose()
    cls = worker_settings("noop", [tk_noop], redis_settings=RedisSettings.from_dsn(url), prefix=prefix,
                          concurrency=concurrency, poll_delay_s=0.01)
    w = create_worker(cls, burst=True, handle_signals=False)
    dt = await _drain(w, "taskkit", n)
    assert w.jobs_complete == n, w.jobs_complete
    return enq, n / dt


# --- (b) batching -------------------------------------------------------------------------------------
class Downstream:
    """A downstream whose call costs 2 ms + 0.05 ms per item and serves one call at a time.

    `blocking=False`: a remote service with one connection per worker (the wait is async, the worker's
    event loop keeps running). `blocking=True`: an in-process CPU model (an embedding forward pass)
    that holds the event loop for the whole call.
    """

    def __init__(self, blocking: bool) -> None:
        self.blocking = blocking
        self.lock = asyncio.Lock()
        self.calls = 0
        self.items = 0

    async def __call__(self, items: list) -> list:
        cost = 0.002 + 0.00005 * len(items)
        self.calls += 1
        self.items += len(items)
        if self.blocking:
            time.sleep(cost)  # deliberately blocks the loop: it models a CPU-bound call
        else:
            async with self.lock:
                await asyncio.sleep(cost)
        return [f"ok:{i}" for i in items]


@task(queue="unbatched")
async def one_by_one(ctx, items: list[int]) -> list[str]:
    """Unbatched: one downstream call per item."""
    return [(await ctx["downstream"]([i]))[0] for i in items]


@task(queue="batched")
async def via_batcher(ctx, items: list[int]) -> list[str]:
    """Batched: every item goes through the worker's Batcher and gets its own result."""
    outcomes = await ctx["batcher"].submit_many(items)
    return [o.value for o in outcomes]


async def batching_run(url: str, prefix: str, n: int, batched: bool, blocking: bool,
                       concurrency: int, linger_s: float, per_job: int = 1) -> tuple[float, Downstream]:
    """Drain n items (n / per_job jobs); returns items/s and the downstream's call log."""
    redis = Redis.from_url(url)
    prod = Producer(redis, prefix=prefix, watermarks=Watermarks(high=10 * n, low=n))
    fn = via_batcher if batched else one_by_one
    for i in range(0, n, per_job):
        await prod.enqueue(fn, list(range(i, min(n, i + per_job))))
    await redis.aclose()
    down = Downstream(blocking)

    async def startup(ctx):
        ctx["downstream"] = down
        ctx["batcher"] = Batcher(down, name="bench", max_items=64, linger_s=linger_s)

    cls = worker_settings(fn.taskkit.queue, [fn], redis_settings=RedisSettings.from_dsn(url), prefix=prefix,
                          concurrency=concurrency, poll_delay_s=0.01, on_startup=startup)
    w = create_worker(cls, burst=True, handle_signals=False)
    dt = await _drain(w)
    assert w.jobs_complete == -(-n // per_job) and down.items == n, (w.jobs_complete, down.items)
    return n / dt, down


async def cleanup(url: str, prefix: str) -> int:
    redis = Redis.from_url(url)
    n = 0
    try:
        for pattern in (f"{prefix}*", Keys(prefix).arq_scan_pattern()):
            batch = []
            async for k in redis.scan_iter(match=pattern, count=1000):
                batch.append(k)
                if len(batch) >= 500:
                    n += await redis.unlink(*batch)
                    batch = []
            if batch:
                n += await redis.unlink(*batch)
    finally:
        await redis.aclose()
    return n


def med(xs: list[float]) -> float:
    return statistics.median(xs)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-url", default=DEFAULT_URL)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=3000, help="jobs per no-op run")
    ap.add_argument("--concurrency", type=int, default=10, help="ARQ max_jobs for the no-op runs")
    ap.add_argument("--batch-jobs", type=int, default=3000, help="jobs per batched run (unbatched: a third)")
    ap.add_argument("--batch-concurrency", type=int, default=64, help="ARQ max_jobs for the batching runs")
    ap.add_argument("--part", choices=["a", "b", "all"], default="all", help="which benchmark to run")
    ap.add_argument("--items-per-job", type=int, default=16, help="extra run (b') with multi-item jobs; 1 = skip")
    ap.add_argument("--linger-ms", type=float, default=10.0, help="batcher linger time")
    args = ap.parse_args()
    root = f"bench:tk:{uuid.uuid4().hex[:8]}:"
    try:
        print(f"taskkit bench — redis {args.redis_url}, {args.repeats} repeats, medians")
        if args.part in ("a", "all"):
            await bench_noop(args, root)
        if args.part in ("b", "all"):
            await bench_batching(args, root)
    finally:
        await cleanup(args.redis_url, root)


async def bench_noop(args: argparse.Namespace, root: str) -> None:
    print(f"(a) no-op: {args.jobs} jobs per run, max_jobs={args.concurrency}, burst worker in-process")
    pe, pd, te, td, ratios = [], [], [], [], []
    for r in range(args.repeats):
        order = [False, True] if r % 2 == 0 else [True, False]
        got = {}
        for use_tk in order:
            prefix = f"{root}a{r}{'t' if use_tk else 'p'}:"
            fn = through_taskkit if use_tk else plain_arq
            got[use_tk] = await fn(args.redis_url, prefix, args.jobs, args.concurrency)
            await cleanup(args.redis_url, prefix)
        pe.append(got[False][0])
        pd.append(got[False][1])
        te.append(got[True][0])
        td.append(got[True][1])
        ratios.append(got[True][1] / got[False][1])
        print(f"  run {r + 1}: worker plain ARQ {got[False][1]:7.0f}/s  taskkit {got[True][1]:7.0f}/s  "
              f"ratio {ratios[-1]:.1%}   enqueue plain {got[False][0]:6.0f}/s  taskkit {got[True][0]:6.0f}/s")
    print(f"  median worker throughput: plain ARQ {med(pd):.0f} jobs/s, taskkit {med(td):.0f} jobs/s "
          f"→ taskkit/ARQ = {med(td) / med(pd):.1%} (median of per-run ratios {med(ratios):.1%}; goal >= 90%)")
    cp, ct = med(CPU["plain"]), med(CPU["taskkit"])
    print(f"  median worker CPU per job (less sensitive to other load on the machine): plain ARQ {cp:.0f} µs, "
          f"taskkit {ct:.0f} µs → CPU-bound throughput ratio {cp / ct:.1%}")
    print(f"  median enqueue rate: ARQ enqueue_job {med(pe):.0f}/s, taskkit Producer.enqueue {med(te):.0f}/s "
          f"= {med(te) / med(pe):.1%}")



async def bench_batching(args: argparse.Namespace, root: str) -> None:
    nb = args.batch_jobs
    nu = max(200, nb // 3)
    print(f"(b) downstream 2 ms + 0.05 ms/item, one call at a time; max_jobs={args.batch_concurrency}, "
          f"batcher max 64 items, linger {args.linger_ms:g} ms; {nb} jobs batched, {nu} unbatched per run")
    for blocking in (False, True):
        label = "in-process CPU model (blocks the loop)" if blocking else "remote service (async wait)"
        ub, bt, rs, sizes = [], [], [], []
        for r in range(args.repeats):
            u, _ = await batching_run(args.redis_url, f"{root}b{r}u{int(blocking)}:", nu, False, blocking,
                                      args.batch_concurrency, args.linger_ms / 1000)
            b, down = await batching_run(args.redis_url, f"{root}b{r}b{int(blocking)}:", nb, True, blocking,
                                         args.batch_concurrency, args.linger_ms / 1000)
            await cleanup(args.redis_url, f"{root}b{r}")
            ub.append(u)
            bt.append(b)
            rs.append(b / u)
            sizes.append(down.items / down.calls)
        print(f"  {label}: unbatched {med(ub):.0f} jobs/s, batched {med(bt):.0f} jobs/s "
              f"(mean batch {med(sizes):.1f} items) → {med(rs):.1f}x (goal >= 10x)")
    k = args.items_per_job
    if k > 1:
        print(f"(b') the same with {k} items per job (remote-service downstream), in items/s")
        ub, bt, rs, sizes = [], [], [], []
        for r in range(args.repeats):
            u, _ = await batching_run(args.redis_url, f"{root}c{r}u:", nu, False, False,
                                      args.batch_concurrency, args.linger_ms / 1000, k)
            b, down = await batching_run(args.redis_url, f"{root}c{r}b:", nb * 2, True, False,
                                         args.batch_concurrency, args.linger_ms / 1000, k)
            await cleanup(args.redis_url, f"{root}c{r}")
            ub.append(u)
            bt.append(b)
            rs.append(b / u)
            sizes.append(down.items / down.calls)
        print(f"  unbatched {med(ub):.0f} items/s, batched {med(bt):.0f} items/s "
              f"(mean batch {med(sizes):.1f} items) → {med(rs):.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
