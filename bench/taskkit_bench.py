"""taskkit benchmarks: (a) no-op task throughput through taskkit vs plain ARQ, same Redis, same run;
(b) batched vs unbatched throughput for a task whose downstream call costs 2 ms + 0.05 ms per item.

Each taskkit figure is measured twice: on ARQ's own Worker ("plain") and on taskkit.fastworker.FastWorker
("fast": batched claims and batched job ends on ARQ's keys), which is what `hotpath worker` runs.

Usage: python bench/taskkit_bench.py [--redis-url URL] [--repeats 5] [--jobs 3000] [--part a|b|all] [--uvloop]
Each figure is the median of the repeats; the variants alternate within each repeat so drift hits all.
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
from concurrent.futures import ThreadPoolExecutor

from arq.connections import RedisSettings, create_pool
from arq.worker import Worker
from redis.asyncio import Redis

from taskkit import Batcher, Producer, Watermarks, task, worker_settings
from taskkit.fastworker import create_worker as tk_create_worker
from taskkit.keys import Keys

DEFAULT_URL = os.environ.get("HOTPATH_REDIS_URL", "redis://127.0.0.1:6379/0")


# --- (a) no-op ------------------------------------------------------------------------------------
async def noop(ctx) -> None:
    return None


@task(queue="noop")
async def tk_noop(ctx) -> None:
    return None


CPU: dict[str, list[float]] = {"plain": [], "taskkit": [], "fast": []}


async def _drain(worker: Worker, label: str | None = None, n: int = 0) -> float:
    """Run a burst worker until its queue is empty; returns wall seconds (and records CPU µs/job)."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    await worker.async_run()
    dt = time.perf_counter() - t0
    if label:
        CPU.setdefault(label, []).append((time.process_time() - c0) / n * 1e6)
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


async def through_taskkit(url: str, prefix: str, n: int, concurrency: int, fast: bool = False) -> tuple[float, float]:
    """The same through taskkit: Producer.enqueue (Lua: dedup + watermark) and a worker_settings worker
    (ARQ's Worker, or taskkit's FastWorker with `fast`)."""
    redis = Redis.from_url(url)
    prod = Producer(redis, prefix=prefix, watermarks=Watermarks(high=10 * n, low=n))
    t0 = time.perf_counter()
    for _ in range(n):
        await prod.enqueue(tk_noop)
    enq = n / (time.perf_counter() - t0)
    await redis.aclose()
    cls = worker_settings("noop", [tk_noop], redis_settings=RedisSettings.from_dsn(url), prefix=prefix,
                          concurrency=concurrency, poll_delay_s=0.01)
    w = tk_create_worker(cls, fast=fast, burst=True, handle_signals=False)
    dt = await _drain(w, "fast" if fast else "taskkit", n)
    assert w.jobs_complete == n, w.jobs_complete
    return enq, n / dt


# --- (b) batching -------------------------------------------------------------------------------------
class Downstream:
    """A downstream whose call costs 2 ms + 0.05 ms per item and serves one call at a time.

    `blocking=False`: a remote service with one connection per worker (the wait is async, the worker's
    event loop keeps running; the "service" is a thread that sleeps the call's cost, so the answer wakes
    the loop through a file descriptor like a socket reply would -- an asyncio.sleep would be rounded up
    to whole milliseconds by epoll when the loop is otherwise idle, 2.05 ms becoming 3 ms).
    `blocking=True`: an in-process CPU model (an embedding forward pass) that holds the event loop for the
    whole call.
    """

    def __init__(self, blocking: bool) -> None:
        self.blocking = blocking
        self.lock = asyncio.Lock()
        self.service = None if blocking else ThreadPoolExecutor(1, thread_name_prefix="downstream")
        self.calls = 0
        self.items = 0
        self.cpu_us_per_job = 0.0

    async def __call__(self, items: list) -> list:
        cost = 0.002 + 0.00005 * len(items)
        self.calls += 1
        self.items += len(items)
        if self.blocking:
            time.sleep(cost)  # deliberately blocks the loop: it models a CPU-bound call
        else:
            async with self.lock:
                await asyncio.get_running_loop().run_in_executor(self.service, time.sleep, cost)
        return [f"ok:{i}" for i in items]

    def close(self) -> None:
        if self.service is not None:
            self.service.shutdown()


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
                       concurrency: int, linger_s: float, per_job: int = 1,
                       fast: bool = False) -> tuple[float, Downstream]:
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
    w = tk_create_worker(cls, fast=fast, burst=True, handle_signals=False)
    n_jobs = -(-n // per_job)
    dt = await _drain(w, "batching", n_jobs)
    down.cpu_us_per_job = CPU["batching"][-1]  # worker CPU (whole process) per job while draining
    down.close()
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


# One item per call, one call at a time: at most 1 / (2 ms + 0.05 ms) calls per second, whatever the worker.
UNBATCHED_CEILING = 1 / 0.00205


def med(xs: list[float]) -> float:
    return statistics.median(xs)


async def main(args: argparse.Namespace) -> None:
    root = f"bench:tk:{uuid.uuid4().hex[:8]}:"
    try:
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        print(f"taskkit bench — redis {args.redis_url}, {args.repeats} repeats, medians, event loop: {loop}")
        if args.part in ("a", "all"):
            await bench_noop(args, root)
        if args.part in ("b", "all"):
            await bench_batching(args, root)
    finally:
        await cleanup(args.redis_url, root)


async def bench_noop(args: argparse.Namespace, root: str) -> None:
    print(f"(a) no-op: {args.jobs} jobs per run, max_jobs={args.concurrency}, burst worker in-process")
    names = ("plain", "taskkit", "fast")  # plain ARQ; taskkit on ARQ's Worker; taskkit on FastWorker
    enq: dict[str, list[float]] = {k: [] for k in names}
    rate: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.repeats):
        order = names[r % 3:] + names[:r % 3]
        for name in order:
            prefix = f"{root}a{r}{name[0]}:"
            if name == "plain":
                e, d = await plain_arq(args.redis_url, prefix, args.jobs, args.concurrency)
            else:
                e, d = await through_taskkit(args.redis_url, prefix, args.jobs, args.concurrency, fast=name == "fast")
            enq[name].append(e)
            rate[name].append(d)
            await cleanup(args.redis_url, prefix)
        print(f"  run {r + 1}: worker plain ARQ {rate['plain'][-1]:7.0f}/s  taskkit {rate['taskkit'][-1]:7.0f}/s  "
              f"taskkit fast {rate['fast'][-1]:7.0f}/s   enqueue plain {enq['plain'][-1]:6.0f}/s  "
              f"taskkit {med([enq['taskkit'][-1], enq['fast'][-1]]):6.0f}/s")
    p, t, f = med(rate["plain"]), med(rate["taskkit"]), med(rate["fast"])
    ratios = [b / a for a, b in zip(rate["plain"], rate["taskkit"], strict=True)]
    print(f"  median worker throughput: plain ARQ {p:.0f} jobs/s, taskkit {t:.0f} jobs/s → taskkit/ARQ = {t / p:.1%} "
          f"(median of per-run ratios {med(ratios):.1%}; goal >= 90%); taskkit on FastWorker {f:.0f} jobs/s "
          f"= {f / p:.1%} of plain ARQ")
    cp, ct, cf = med(CPU["plain"]), med(CPU["taskkit"]), med(CPU["fast"])
    print(f"  median worker CPU per job (less sensitive to other load on the machine): plain ARQ {cp:.0f} µs, "
          f"taskkit {ct:.0f} µs → CPU-bound throughput ratio {cp / ct:.1%}; taskkit on FastWorker {cf:.0f} µs")
    te = enq["taskkit"] + enq["fast"]
    print(f"  median enqueue rate: ARQ enqueue_job {med(enq['plain']):.0f}/s, taskkit Producer.enqueue {med(te):.0f}/s "
          f"= {med(te) / med(enq['plain']):.1%}")


async def _batching_pair(args: argparse.Namespace, prefix: str, n_un: int, n_b: int, blocking: bool,
                         per_job: int, fast: bool, concurrency: int) -> tuple[float, float, float, float]:
    """One unbatched and one batched run on the same worker class:
    (unbatched/s, batched/s, mean batch, batched worker CPU µs per job)."""
    linger = args.linger_ms / 1000
    u, _ = await batching_run(args.redis_url, f"{prefix}u:", n_un, False, blocking, concurrency,
                              linger, per_job, fast=fast)
    b, down = await batching_run(args.redis_url, f"{prefix}b:", n_b, True, blocking, concurrency,
                                 linger, per_job, fast=fast)
    await cleanup(args.redis_url, prefix)
    return u, b, down.items / down.calls, down.cpu_us_per_job


def _report(label: str, unit: str, rows: dict[str, list[tuple[float, float, float, float]]]) -> None:
    for kind in ("plain", "fast"):
        ub = [x[0] for x in rows[kind]]
        bt = [x[1] for x in rows[kind]]
        rs = [x[1] / x[0] for x in rows[kind]]
        sz = [x[2] for x in rows[kind]]
        cpu = [x[3] for x in rows[kind]]
        worker = "ARQ Worker" if kind == "plain" else "FastWorker"
        print(f"  {label}, {worker}: unbatched {med(ub):.0f} {unit}/s, batched {med(bt):.0f} {unit}/s "
              f"(mean batch {med(sz):.1f} items, worker CPU {med(cpu):.0f} µs/job) → {med(rs):.1f}x "
              f"(median of per-run ratios; ratio of medians {med(bt) / med(ub):.1f}x; batched vs the "
              f"488 jobs/s unbatched ceiling {med(bt) / UNBATCHED_CEILING:.1f}x)")


async def bench_batching(args: argparse.Namespace, root: str) -> None:
    nb = args.batch_jobs
    nu = max(200, nb // 3)
    for conc in args.batch_concurrency:
        print(f"(b) downstream 2 ms + 0.05 ms/item, one call at a time; max_jobs={conc}, "
              f"batcher max 64 items, linger {args.linger_ms:g} ms; {nb} jobs batched, {nu} unbatched per run; "
              f"goal >= 10x (unbatched ceiling 1 / 2.05 ms = 488 jobs/s)")
        for blocking in (False, True):
            label = "in-process CPU model (blocks the loop)" if blocking else "remote service (async wait)"
            rows: dict[str, list[tuple[float, float, float, float]]] = {"plain": [], "fast": []}
            for r in range(args.repeats):
                for kind in (("plain", "fast") if r % 2 == 0 else ("fast", "plain")):
                    rows[kind].append(await _batching_pair(args, f"{root}b{conc}r{r}{kind[0]}{int(blocking)}:", nu,
                                                           nb, blocking, 1, kind == "fast", conc))
            _report(label, "jobs", rows)
    k = args.items_per_job
    if k > 1:
        conc = args.batch_concurrency[0]
        print(f"(b') the same with {k} items per job (remote-service downstream, max_jobs={conc}), in items/s")
        rows = {"plain": [], "fast": []}
        for r in range(args.repeats):
            for kind in (("plain", "fast") if r % 2 == 0 else ("fast", "plain")):
                rows[kind].append(await _batching_pair(args, f"{root}c{r}{kind[0]}:", nu, nb * 2, False, k,
                                                       kind == "fast", conc))
        _report(f"{k} items per job", "items", rows)


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-url", default=DEFAULT_URL)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=3000, help="jobs per no-op run")
    ap.add_argument("--concurrency", type=int, default=10, help="ARQ max_jobs for the no-op runs")
    ap.add_argument("--batch-jobs", type=int, default=3000, help="jobs per batched run (unbatched: a third)")
    ap.add_argument("--batch-concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[64, 128],
                    help="ARQ max_jobs for the batching runs, comma-separated (each is a separate (b) run)")
    ap.add_argument("--part", choices=["a", "b", "all"], default="all", help="which benchmark to run")
    ap.add_argument("--items-per-job", type=int, default=16, help="extra run (b') with multi-item jobs; 1 = skip")
    ap.add_argument("--linger-ms", type=float, default=10.0, help="batcher linger time")
    ap.add_argument("--uvloop", action="store_true", help="run everything on uvloop (as `hotpath worker` does)")
    args = ap.parse_args()
    from taskkit.fastworker import new_event_loop

    with asyncio.Runner(loop_factory=lambda: new_event_loop(args.uvloop)) as runner:
        runner.run(main(args))


if __name__ == "__main__":
    cli()
