"""What tracing costs on the hottest call (issue 11 point 5): membership-check cache hits (MembershipFastPath) per
second with tracing off, on with spans made but not exported, and on exporting OTLP to a loopback collector.

Three `hotpath api` processes on one SQLite demo origin and one Redis (near cache off, so every hit is a Redis call
the redis instrumentation traces), all up for the whole run; load from wrk (32 connections) in its own process;
variants interleaved repeat by repeat, medians reported. The variants differ only in their environment:
  off      HOTPATH_TRACING=off (the default without OTEL_EXPORTER_OTLP_ENDPOINT): nothing installed
  spans    HOTPATH_TRACING=otlp, OTEL_TRACES_EXPORTER=none: server + Redis spans made, trace ids in the access
           lines, nothing exported (the no-op exporter)
  otlp     HOTPATH_TRACING=otlp, OTEL_EXPORTER_OTLP_ENDPOINT=a loopback sink in this process (answers 200 to each
           export): the whole cost, batching and protobuf encoding included
  sampled  as otlp, with OTEL_TRACES_SAMPLER=parentbased_traceidratio and OTEL_TRACES_SAMPLER_ARG=0.01 (1% of the
           traces that start here recorded; the middleware and the wrapped client still run on every request)

Run:   flock /tmp/hotpath-bench.lock .venv/bin/python bench/tracing_bench.py [--seconds 5] [--repeats 3] [--quick]
Needs: Redis at HOTPATH_BENCH_REDIS_URL (default redis://127.0.0.1:6379/0), wrk. Removes its Redis keys at the end.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load import Run, Server, fmt, free_port, median_run, wait_http, wrk  # noqa: E402

REDIS_URL = os.environ.get("HOTPATH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CONNECTIONS = 32
VARIANTS = ("off", "spans", "otlp", "sampled")


class _Sink(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP collector stand-in: reads each export and answers 200 with an empty ExportTraceServiceResponse."""

    exports = 0
    bytes = 0

    def do_POST(self) -> None:
        n = int(self.headers.get("content-length", 0))
        self.rfile.read(n)
        _Sink.exports += 1
        _Sink.bytes += n
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def member(db: Path) -> tuple[str, str, str]:
    """One (tenant, room, user) membership of the demo origin."""
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT tenant_id, room_id, user_id FROM room_members ORDER BY tenant_id, room_id, "
                           "user_id LIMIT 1").fetchone()
    if row is None:
        sys.exit("tracing_bench: the demo origin has no membership")
    return row


def delete_keys(prefixes: list[str]) -> int:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    n = 0
    try:
        for prefix in prefixes:
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            for i in range(0, len(keys), 500):
                n += client.delete(*keys[i:i + 500])
    finally:
        client.close()
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5, help="wrk duration per run (default 5)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats per variant (default 3)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 s runs, 1 repeat")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.repeats = 1, 1
    if not shutil.which("wrk"):
        sys.exit("tracing_bench: wrk is not installed (apt-get install -y wrk)")
    from cacheman.auth import mint_token

    tag = f"{os.getpid()}_{secrets.token_hex(2)}"
    prefix, tk_prefix = f"hpbench-trace-{tag}", f"hpbench-trace-{tag}:tk:"
    tmp = Path(tempfile.mkdtemp(prefix="tracing_bench_"))
    db = tmp / "origin.db"
    secret, kid = secrets.token_hex(32), "bench"
    hotpath = str(Path(sys.executable).with_name("hotpath"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOTPATH_", "OTEL_"))}
    env.update({
        "HOTPATH_HOST": "127.0.0.1", "HOTPATH_REDIS_URL": REDIS_URL, "HOTPATH_REDIS_PREFIX": prefix,
        "HOTPATH_TASKKIT_PREFIX": tk_prefix, "HOTPATH_ORIGIN_URL": f"sqlite+aiosqlite:///{db}",
        "HOTPATH_JWT_KEYS": json.dumps({kid: secret}), "HOTPATH_NEAR_CACHE_ENABLED": "false",
        "HOTPATH_RATE_LIMIT_PER_S": "1000000", "HOTPATH_RATE_LIMIT_BURST": "10000000", "HOTPATH_LOG_LEVEL": "INFO",
        "OTEL_BSP_MAX_QUEUE_SIZE": "65536",  # a 2-core machine at full load: keep the spans rather than drop them
    })
    subprocess.run([hotpath, "origin", "init", "--demo"], env=env, check=True, capture_output=True, timeout=120)
    tenant, room, user = member(db)
    token = mint_token(secret, kid=kid, sub="tracing-bench", tenants=[tenant], scope="cache:read", ttl_s=6 * 3600)
    auth = {"Authorization": f"Bearer {token}"}
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    variant_env = {
        "off": {"HOTPATH_TRACING": "off"},
        "spans": {"HOTPATH_TRACING": "otlp", "OTEL_TRACES_EXPORTER": "none"},
        "otlp": {"HOTPATH_TRACING": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_port}"},
        "sampled": {"HOTPATH_TRACING": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_port}",
                    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
    }
    rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                         text=True).stdout.strip() or "unknown"
    servers: list[Server] = []
    runs: dict[str, list[Run]] = {v: [] for v in VARIANTS}
    try:
        urls = {}
        for v in VARIANTS:
            port = free_port()
            servers.append(Server([hotpath, "api", "--port", str(port)],
                                  {**env, **variant_env[v], "HOTPATH_PORT": str(port)}))
            urls[v] = f"http://127.0.0.1:{port}"
        import httpx

        for v in VARIANTS:
            wait_http(urls[v] + "/livez")
            url = f"{urls[v]}/v1/{tenant}/rooms/{room}/members/{user}"
            for _ in range(2):  # the first fills the cache
                res = httpx.get(url, headers=auth, timeout=10)
            if res.status_code != 200 or res.headers.get("x-cache") != "hit":
                sys.exit(f"tracing_bench: {v}: expected a cache hit, got {res.status_code} {res.headers}")
        print(f"tracing bench: code at {rev}, membership hit {tenant}/{room}/{user}, wrk -c{CONNECTIONS}, "
              f"{args.seconds:.0f}s x {args.repeats} interleaved", flush=True)
        for r in range(args.repeats):
            for v in VARIANTS:
                run = wrk(f"{urls[v]}/v1/{tenant}/rooms/{room}/members/{user}", seconds=args.seconds,
                          connections=CONNECTIONS, headers=auth)
                runs[v].append(run)
                print(f"  repeat {r + 1} {v:6s} {fmt(run)}", flush=True)
    finally:
        for s in servers:
            s.__exit__(None, None, None)
        sink.shutdown()
        removed = delete_keys([prefix, tk_prefix])
        shutil.rmtree(tmp, ignore_errors=True)
    med = {v: median_run(runs[v]) for v in VARIANTS}
    base = med["off"].rps
    print()
    print("=" * 100)
    print(f"tracing overhead on the membership hit path (MembershipFastPath), code at {rev}; medians of "
          f"{args.repeats} x {args.seconds:.0f}s, wrk -c{CONNECTIONS}, one uvicorn process each, near cache off")
    print(f"  {'variant':8s} {'req/s':>9s} {'vs off':>7s} {'p50 ms':>7s} {'p99 ms':>7s} errors")
    for v in VARIANTS:
        m = med[v]
        print(f"  {v:8s} {m.rps:9.0f} {m.rps / base:7.2f} {m.p50_ms:7.2f} {m.p99_ms:7.2f} {m.errors}")
    print(f"  OTLP sink: {_Sink.exports} exports, {_Sink.bytes / 1e6:.1f} MB; {removed} Redis keys removed")


if __name__ == "__main__":
    main()
