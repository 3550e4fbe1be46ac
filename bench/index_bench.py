"""Index benchmarks (issue 8, "Performance"): real `hotpath worker index` processes on a Milvus Lite server and
Redis, events enqueued with the producer function, "searchable" = counted by Milvus (then checked by a search).

1. Hashing embedder: messages/s end to end (first enqueue → last message searchable), batched (the worker's
   settings) vs one job and one upsert per message (HOTPATH_INDEX_UPSERT_BATCH_ROWS=1: every event its own batch,
   claim and upsert) on the same stack, same worker concurrency. Goal ≥ 20×.
2. MiniLM: end-to-end throughput as a share of the model's raw `encode` throughput on the same messages with the
   same batch size (measured in this process before the worker starts, so they never share the cores). Goal ≥ 85%.
3. Enqueue → searchable latency p50/p99 at a steady rate (a share of the measured throughput), both embedders.
4. Peak resident memory (VmHWM, children included) of the MiniLM worker while it indexes 100,000 messages.
   Goal ≤ 1.5 GiB. With the breakdown of the worker's time from its /metrics: embed vs Milvus vs the rest.

Usage: python bench/index_bench.py [--quick] [--repeats 3] [--redis-url URL] [--minilm-messages 100000]
Redis: the machine's at 127.0.0.1:6379 (or --redis-url) under a fresh `bench:ix:<random>:` prefix, deleted at the
end; an embedded Valkey when none answers. Milvus: a private `milvus-lite server` on a temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BIN = Path(sys.executable).parent
DEFAULT_REDIS = os.environ.get("HOTPATH_REDIS_URL", "redis://127.0.0.1:6379/0")
CONCURRENCY = 256  # HOTPATH_INDEX_CONCURRENCY of both variants of figure 1 (the default: batches of 128)
MINILM_CONCURRENCY = 1024  # of the MiniLM worker: batches of 512 texts, so each encode call sorts more by length
HASH_DIM = 384
WORDS = ("deploy build release merge branch review ticket customer invoice budget latency metrics alert incident "
         "standup design draft meeting lunch coffee report dashboard database cache queue worker index search "
         "thumbnail upload image message room tenant schema migration rollback hotfix weekend holiday plan "
         "roadmap sprint retro demo question answer thanks please tomorrow today yesterday morning evening").split()


def texts(n: int, seed: int) -> list[str]:
    """Chat-like messages: word counts log-normal around 8 (1 to 60 words, mean ~9.6), as chat lines are short."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=min(60, max(1, round(rng.lognormvariate(math.log(8), 0.6))))))
            for _ in range(n)]


def events(msgs: list[str], start: int = 0) -> list[dict]:
    return [{"op": "upsert", "room_id": f"r{(start + i) % 50}", "message_id": f"m{start + i}", "version": 1,
             "text": t, "sender": "u1", "created_at": "2026-11-26T12:00:00Z"} for i, t in enumerate(msgs)]


# --- processes -------------------------------------------------------------------------------------------------
class Worker:
    """One `hotpath worker index` process with its own Redis prefix and collection."""

    def __init__(self, name: str, redis_url: str, prefix: str, milvus_uri: str, collection: str, dim: int,
                 log_dir: Path, **settings: str) -> None:
        from tests.services import free_port

        self.name = name
        self.dim = dim
        self.prefix = prefix
        self.collection = collection
        self.metrics_port = free_port()
        self.log = log_dir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOTPATH_")}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HOTPATH_REDIS_URL=redis_url,
                   HOTPATH_TASKKIT_PREFIX=prefix, HOTPATH_LOG_LEVEL="INFO", HOTPATH_MILVUS_URI=milvus_uri,
                   HOTPATH_MILVUS_COLLECTION=collection, HOTPATH_INDEX_CONCURRENCY=str(CONCURRENCY),
                   HOTPATH_INDEX_METRICS_PORT=str(self.metrics_port))
        env.update(settings)
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        self.proc = subprocess.Popen([str(BIN / "hotpath"), "worker", "index"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        return self

    async def ready(self, timeout: float = 120) -> Worker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc and self.proc.poll() is None, f"{self.name} exited:\n{self.log.read_text()[-3000:]}"
            if '"msg":"index worker ready"' in self.log.read_text(errors="replace"):
                return self
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    async def metrics(self) -> dict[str, float]:
        """Sums of the worker's index series: embed seconds, Milvus upsert seconds, batches, events."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5)).text
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                label = s.labels.get("op") or s.labels.get("outcome")
                key = s.name + (f"[{label}]" if label else "")
                out[key] = out.get(key, 0.0) + s.value
        return out

    def peak_rss(self) -> int:
        """VmHWM of the worker and its children, bytes."""
        assert self.proc is not None
        total, todo = 0, [self.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            total += next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
        return total

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stack:
    """Redis (the machine's or an embedded Valkey), a Milvus Lite server, the producer and a store per worker."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.prefix = f"bench:ix:{uuid.uuid4().hex[:10]}:"
        self.workdir = Path(tempfile.mkdtemp(prefix="hp-index-bench-"))
        self._valkey = None

    async def __aenter__(self) -> Stack:
        from redis.asyncio import Redis

        from tests.services import MilvusLite, redis_ping, start_valkey

        if not redis_ping(self.redis_url):
            self._valkey = start_valkey()
            self.redis_url = self._valkey.__enter__().connection_url + "/0"
        self.milvus = MilvusLite(str(self.workdir / "milvus")).start()
        self.redis = Redis.from_url(self.redis_url)
        self.workers: list[Worker] = []
        return self

    def worker(self, name: str, dim: int, **settings: str) -> Worker:
        w = Worker(name, self.redis_url, f"{self.prefix}{name}:", self.milvus.uri, f"b_{name}_{uuid.uuid4().hex[:6]}",
                   dim, self.workdir, **settings)
        self.workers.append(w)
        return w.start()

    async def __aexit__(self, *exc) -> None:
        for w in self.workers:
            w.stop()
        for pattern in (self.prefix + "*", "arq:*:" + self.prefix + "*"):
            batch = [k async for k in self.redis.scan_iter(match=pattern, count=1000)]
            for i in range(0, len(batch), 1000):
                await self.redis.unlink(*batch[i:i + 1000])
        await self.redis.aclose()
        self.milvus.close()
        if self._valkey is not None:
            self._valkey.__exit__(None, None, None)
        if exc[0] is None:  # after a failure the worker logs stay, for reading
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            print(f"worker logs kept in {self.workdir}", file=sys.stderr)


def store_of(stack: Stack, w: Worker):
    from index_worker.store import MilvusStore

    return MilvusStore(stack.milvus.uri, collection=w.collection, dim=w.dim, timeout_s=30)


async def retrying(call, *args, **kwargs):
    """A store call of the bench's own, tried again on a transient failure (Milvus Lite answers a channel that sat
    idle between runs with GOAWAY "too many pings", and pymilvus's reconnect then fails once or twice)."""
    from index_worker.milvus_errors import MilvusTransient

    for attempt in range(10):
        try:
            return await call(*args, **kwargs)
        except MilvusTransient:
            if attempt == 9:
                raise
            await asyncio.sleep(1 + attempt)


async def enqueue(stack: Stack, w: Worker, tenant: str, evs: list[dict]) -> None:
    from index_worker.intake import enqueue_index_events
    from taskkit import Producer

    producer = Producer(stack.redis, prefix=w.prefix)
    for i in range(0, len(evs), 1000):
        await enqueue_index_events(producer, tenant, evs[i:i + 1000], backpressure=False)


# --- 1 and 2: end-to-end throughput ---------------------------------------------------------------------------
async def end_to_end(stack: Stack, w: Worker, msgs: list[str], *, poll_s: float, sample=None) -> dict:
    """Enqueue every message at once; the end is when the worker has indexed them all (its indexed counter, bumped
    once Milvus acknowledged the upsert), verified afterwards: every row read back by primary key, the last message
    found by a search. (Milvus Lite's count(*) scans: 2 s at 20,000 rows, so it cannot be the poll.)"""
    from index_worker.store import message_pk

    store = store_of(stack, w)
    tenant = f"t{uuid.uuid4().hex[:8]}"
    await retrying(store.get, [message_pk(tenant, "warm-up")])  # connected before the clock starts
    before = await w.metrics()
    cpu0 = cpu_s(w.proc.pid), cpu_s(stack.milvus.proc.pid), time.process_time()
    t0 = time.perf_counter()
    task = asyncio.create_task(enqueue(stack, w, tenant, events(msgs)))
    done = 0.0
    last_sample = t0
    while done < len(msgs):
        await asyncio.sleep(poll_s)
        if task.done() and task.exception():
            raise task.exception()
        done = (await w.metrics()).get("hotpath_index_events_total[indexed]", 0.0) - \
            before.get("hotpath_index_events_total[indexed]", 0.0)
        if sample and time.perf_counter() - last_sample > 30:
            last_sample = time.perf_counter()
            sample(int(done), last_sample - t0)
        if time.perf_counter() - t0 > 1800:
            raise TimeoutError(f"{done:.0f}/{len(msgs)} indexed after 30 min")
    wall = time.perf_counter() - t0
    cpu = cpu_s(w.proc.pid) - cpu0[0], cpu_s(stack.milvus.proc.pid) - cpu0[1], time.process_time() - cpu0[2]
    peak = w.peak_rss()
    after = await w.metrics()
    stored = 0
    for i in range(0, len(msgs), 1000):
        stored += len(await retrying(store.get, [message_pk(tenant, f"m{j}") for j in range(i, min(len(msgs), i + 1000))]))
    assert stored == len(msgs), f"{stored} of {len(msgs)} messages are in Milvus"
    from index_worker.config import EmbedderConfig

    kind = "hash" if w.env.get("HOTPATH_EMBEDDER") == "hash" else "minilm"
    emb = EmbedderConfig(kind=kind, dim_setting=w.dim).build()
    hits = await retrying(store.search, tenant, (await emb.embed([msgs[-1]]))[0], limit=5)
    assert any(h.message_id == f"m{len(msgs) - 1}" for h in hits), "the last message is not found by a search"
    await store.close()

    def d(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    return {"n": len(msgs), "wall": wall, "rate": len(msgs) / wall, "peak": peak, "cpu": cpu,
            "embed_s": d("hotpath_index_embed_seconds_sum"), "upsert_s": d("hotpath_index_milvus_seconds_sum[upsert]"),
            "batches": d("hotpath_index_batch_events_count"), "events": d("hotpath_index_batch_events_sum")}


def raw_encode(msgs: list[str], batch_size: int, chunk: int) -> tuple[float, float]:
    """MiniLM's own throughput (texts/s) on these messages: one `encode` call for all of them, and `encode` called
    per worker batch (`chunk` texts per call, as the worker's embedder is called)."""
    from index_worker.embed.minilm import load_model

    model = load_model()
    model.encode(msgs[:256], batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)  # warm up
    t0 = time.perf_counter()
    model.encode(msgs, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    whole = len(msgs) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(0, len(msgs), chunk):
        model.encode(msgs[i:i + chunk], batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    chunked = len(msgs) / (time.perf_counter() - t0)
    return whole, chunked


# --- 3: latency at a steady rate ----------------------------------------------------------------------------------
async def latency(stack: Stack, w: Worker, rate: float, seconds: float, seed: int) -> dict:
    """Enqueue `rate` messages/s in 20 ms ticks for `seconds`; a poller `get`s the outstanding ids every 20 ms and
    records when each is first seen. Returns p50/p99 (ms) and the rate achieved."""
    from index_worker.store import message_pk

    store = store_of(stack, w)
    tenant = f"l{uuid.uuid4().hex[:8]}"
    total = int(rate * seconds)
    msgs = texts(total, seed)
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    tick = 0.02

    async def produce() -> None:
        t0 = time.perf_counter()
        i = 0
        while i < total:
            due = min(total, int((time.perf_counter() - t0) * rate) + 1)
            if due > i:
                now = time.perf_counter()
                await enqueue(stack, w, tenant, events(msgs[i:due], start=i))
                for j in range(i, due):
                    sent[f"m{j}"] = now
                i = due
            await asyncio.sleep(tick)

    async def poll() -> None:
        while len(seen) < total:
            waiting = [m for m in sent if m not in seen]
            if waiting:
                got = await retrying(store.get, [message_pk(tenant, m) for m in waiting[:2000]])
                now = time.perf_counter()
                for r in got:
                    seen.setdefault(r["message_id"], now)
            await asyncio.sleep(tick)

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(produce(), poll()), seconds * 4 + 120)
    achieved = total / (max(sent.values()) - t0)
    await store.close()
    lat = sorted((seen[m] - sent[m]) * 1000 for m in sent)
    return {"rate": rate, "achieved": achieved, "n": total, "p50": statistics.median(lat),
            "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))], "max": lat[-1]}


# --- the run ------------------------------------------------------------------------------------------------------
def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def breakdown(r: dict) -> str:
    per_batch = r["events"] / r["batches"] if r["batches"] else 0
    worker, milvus, bench = r["cpu"]
    return (f"{r['batches']:.0f} batches of {per_batch:.0f}; summed over batches: embed {r['embed_s']:.1f}s "
            f"({r['embed_s'] / r['wall']:.0%} of wall), Milvus upsert {r['upsert_s']:.1f}s "
            f"({r['upsert_s'] / r['wall']:.0%}); CPU: worker {worker:.1f}s ({worker / r['wall']:.0%} of a core, "
            f"{worker / r['n'] * 1e6:.0f} µs/msg), Milvus Lite {milvus:.1f}s, bench (enqueue, polls) {bench:.1f}s")


async def run(args) -> None:
    quick = args.quick
    n_hash = 2000 if quick else 20_000
    n_single = 500 if quick else 2_000
    n_minilm = 2000 if quick else args.minilm_messages
    n_raw = 1000 if quick else 5_000
    repeats = 1 if quick else args.repeats
    print(f"index bench {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: worker concurrency {CONCURRENCY} "
          f"(MiniLM {MINILM_CONCURRENCY}), "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}" + (" (--quick)" if quick else ""), flush=True)
    async with Stack(args.redis_url) as stack:
        print(f"  Redis {stack.redis_url} prefix {stack.prefix}; Milvus Lite {stack.milvus.uri}", flush=True)
        hashing = {"HOTPATH_EMBEDDER": "hash", "HOTPATH_EMBEDDER_DIM": str(HASH_DIM)}
        batched = stack.worker("hash_batched", HASH_DIM, **hashing)
        single = stack.worker("hash_single", HASH_DIM, HOTPATH_INDEX_UPSERT_BATCH_ROWS="1", **hashing)
        await batched.ready()
        await single.ready()

        # 1. batched vs one job and one upsert per message, alternating
        rb, rs = [], []
        for rep in range(repeats):
            rb.append(await end_to_end(stack, batched, texts(n_hash, 100 + rep), poll_s=0.05))
            rs.append(await end_to_end(stack, single, texts(n_single, 200 + rep), poll_s=0.05))
            print(f"  (1) repeat {rep + 1}: batched {rb[-1]['rate']:.0f}/s, one per message {rs[-1]['rate']:.0f}/s",
                  flush=True)
        b, s = statistics.median(r["rate"] for r in rb), statistics.median(r["rate"] for r in rs)
        print(f"(1) hashing embedder ({HASH_DIM}-d), enqueue → searchable, medians of {repeats}:\n"
              f"    batched {b:.0f} msg/s ({n_hash} messages; {breakdown(rb[-1])})\n"
              f"    one job + one upsert per message {s:.0f} msg/s ({n_single} messages; {breakdown(rs[-1])})\n"
              f"    → {b / s:.1f}x (goal ≥ 20x)", flush=True)
        single.stop()

        # 3a. latency with the hashing embedder at half the batched throughput (capped at 2000/s)
        rate = min(2000.0, round(b * 0.5, -1))
        lh = await latency(stack, batched, rate, 5 if quick else 20, 300)
        print(f"(3) latency, hashing embedder, {lh['n']} messages at {lh['rate']:.0f}/s (achieved "
              f"{lh['achieved']:.0f}/s): p50 {lh['p50']:.0f} ms, p99 {lh['p99']:.0f} ms, max {lh['max']:.0f} ms "
              "(20 ms enqueue ticks and polling; linger 0.1 s)", flush=True)
        batched.stop()

        # 2. MiniLM: raw encode first (nothing else running), then the worker
        msgs = texts(n_minilm, 400)
        chunk = MINILM_CONCURRENCY // 2
        whole, chunked = raw_encode(msgs[:n_raw], 64, chunk)
        print(f"(2) MiniLM raw encode, {n_raw} of the messages, batch_size 64: {whole:.0f} texts/s in one call, "
              f"{chunked:.0f} texts/s in calls of {chunk} (the worker's batch)", flush=True)
        mini = stack.worker("minilm", 384, HOTPATH_EMBEDDER="minilm", HOTPATH_EMBED_BATCH_SIZE="64",
                            HOTPATH_INDEX_CONCURRENCY=str(MINILM_CONCURRENCY))
        await mini.ready(300)

        def sample(n: int, t: float) -> None:
            print(f"      {n} indexed after {t:.0f}s, worker VmHWM {gib(mini.peak_rss())}", flush=True)

        rm = await end_to_end(stack, mini, msgs, poll_s=0.5, sample=sample)
        print(f"(2) MiniLM end to end, {rm['n']} messages: {rm['rate']:.0f} msg/s in {rm['wall']:.0f}s → "
              f"{rm['rate'] / whole:.0%} of raw encode in one call, {rm['rate'] / chunked:.0%} of raw encode per "
              f"worker batch (goal ≥ 85%)\n    {breakdown(rm)}", flush=True)
        print(f"(4) peak resident memory of the MiniLM worker (VmHWM, children included) over {rm['n']} messages: "
              f"{gib(rm['peak'])} (goal ≤ 1.5 GiB)", flush=True)

        # 3b. latency with MiniLM at half its throughput
        rate = max(10.0, round(rm["rate"] * 0.5, -1))
        lm = await latency(stack, mini, rate, 5 if quick else 30, 500)
        print(f"(3) latency, MiniLM, {lm['n']} messages at {lm['rate']:.0f}/s (achieved {lm['achieved']:.0f}/s): "
              f"p50 {lm['p50']:.0f} ms, p99 {lm['p99']:.0f} ms, max {lm['max']:.0f} ms", flush=True)
        print(f"    MiniLM worker VmHWM at the end: {gib(mini.peak_rss())}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--quick", action="store_true", help="A smoke run: small sizes, one repeat (~2 min).")
    parser.add_argument("--repeats", type=int, default=3, help="Repeats of figure 1 (medians).")
    parser.add_argument("--minilm-messages", type=int, default=100_000, help="Messages of the MiniLM run (figures 2 and 4).")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS, help="Redis to use (an embedded Valkey if it does not answer).")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    code = 0
    try:
        asyncio.run(run(args))
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    # grpc can deadlock in a channel's __del__ at interpreter exit (seen here): leave without finalizers
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
