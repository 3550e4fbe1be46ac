"""cache_bench.py's issue-10 figures (the hit path near the server's ceiling, the cluster, several processes), each
beside its baseline in the same run; called by cache_bench.py (section `scale`), which owns the servers and the data.

Why raw ASGI baselines: they price what any Python server pays on this machine (uvicorn with cacheman/server.py's
flags, and one GET through the cache's own redis-py client, timeouts included), so the ratio is what the hit path
adds to that floor: auth, rate limit, metrics, the access line, the cache logic.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from bench.load import free_port, wait_http, wrk

RAW_APP = r'''
"""Raw ASGI baselines for cache_bench: `get` answers one redis-py GET (the cache's client, cacheman/redisconn.py),
`const` a constant body; uvicorn with cacheman/server.py's flags; no auth, no metrics, no log."""
import os
import sys

import uvicorn

from cacheman.redisconn import RedisConfig, open_redis
from cacheman.server import FLAGS

KIND, PORT, KEY = sys.argv[1], int(sys.argv[2]), os.environ["BENCH_KEY"].encode()
redis = open_redis(RedisConfig(url=os.environ["HOTPATH_REDIS_URL"], timeout_s=float(os.environ.get("HOTPATH_REDIS_TIMEOUT_S", "1.0"))))
CONST = b'{"room_id":"room-0000","user_id":"user-00000","role":"member"}'
HEADERS = [(b"content-type", b"application/json")]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await redis.aclose()
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = (await redis.get(KEY) or b"null") if KIND == "get" else CONST
    await send({"type": "http.response.start", "status": 200, "headers": [*HEADERS, (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=PORT, **FLAGS)).run()
'''


def access_lines(log: Path, route: str) -> int:
    needle = b'"route":' + json.dumps(route).encode()
    with log.open("rb") as fh:
        return sum(1 for line in fh if b'"logger":"cacheman.access"' in line and needle in line)


def requests_counted(api: str, route: str) -> int:
    import httpx

    text = httpx.get(api + "/metrics", timeout=10).text
    prefix = "hotpath_http_requests_total{"
    return round(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith(prefix) and f'route="{route}"' in line))


def section_scale(b, pair: tuple[str, str]) -> None:
    """`b` is cache_bench's Bench (its api processes off/near, token, servers, table); `pair` a cached membership."""
    from tests.cluster import LocalCluster

    room, user = pair
    path = f"/v1/{b.tenant}/rooms/{room}/members/{user}"
    (b.tmp / "cache_bench_raw.py").write_text(RAW_APP)
    raw_env = {**b.api_env, "BENCH_KEY": b.get_key, "PYTHONPATH": str(b.root)}
    raw = {kind: f"http://127.0.0.1:{free_port()}" for kind in ("get", "const")}
    for kind, url in raw.items():
        b._start([sys.executable, str(b.tmp / "cache_bench_raw.py"), kind, url.rsplit(":", 1)[1]], raw_env)
    print("\n10. issue 10: the hit path near the ceiling, the cluster, --workers 2", flush=True)
    cluster = LocalCluster(node_timeout_ms=2000).start()
    try:
        port = free_port()
        b.api["cluster"] = f"http://127.0.0.1:{port}"
        b._start([b.hotpath, "api", "--port", str(port)], {
            **b.api_env, "HOTPATH_PORT": str(port), "HOTPATH_REDIS_URL": cluster.url, "HOTPATH_REDIS_CLUSTER": "true",
            "HOTPATH_QUEUE_REDIS_URL": b.redis_url, "HOTPATH_NEAR_CACHE_ENABLED": "false"}, log="api-cluster.log")
        port = free_port()
        b.api["workers2"] = f"http://127.0.0.1:{port}"
        b._start([b.hotpath, "api", "--port", str(port)], {
            **b.api_env, "HOTPATH_PORT": str(port), "HOTPATH_API_WORKERS": "2", "HOTPATH_NEAR_CACHE_ENABLED": "false"},
            log="api-workers2.log")
        for url in (*raw.values(), b.api["cluster"], b.api["workers2"]):
            wait_http(url + ("/livez" if url in b.api.values() else "/"), timeout=90)
        for name in ("off", "near", "cluster", "workers2"):
            for _ in range(4):  # fill the entry (and, with two processes, reach both)
                r = b.get_json(b.api[name] + path)
                assert r["role"] == "member", (name, r)
        variants = {
            "hit path (auth, limit, metrics, log)": {"url": b.api["off"] + path},
            "raw ASGI + one redis-py GET": {"url": raw["get"] + "/"},
            "near cache hit (same, near on)": {"url": b.api["near"] + path},
            "raw ASGI constant response": {"url": raw["const"] + "/"},
            "hit path, 3-master cluster": {"url": b.api["cluster"] + path},
            "hit path, --workers 2": {"url": b.api["workers2"] + path},
        }
        res = b.interleave(variants)
    finally:
        cluster.close()
    hit, get = res["hit path (auth, limit, metrics, log)"], res["raw ASGI + one redis-py GET"]
    near, const = res["near cache hit (same, near on)"], res["raw ASGI constant response"]
    clu, w2 = res["hit path, 3-master cluster"], res["hit path, --workers 2"]
    t = b.table
    t.add("10. hit path req/s vs raw ASGI + redis-py GET", f"{hit.rps:.0f}", f"{get.rps:.0f}", f"{hit.rps / get.rps:.2f}",
          ">= 0.65", hit.rps / get.rps >= 0.65)
    t.add("10. hit path p50 / p99 ms vs raw GET", f"{hit.p50_ms:.2f} / {hit.p99_ms:.2f}", f"{get.p50_ms:.2f} / {get.p99_ms:.2f}",
          f"{hit.p50_ms / get.p50_ms:.2f} / {hit.p99_ms / get.p99_ms:.2f}", "p99 <= 1.0x", hit.p99_ms <= get.p99_ms)
    t.add("10. near-cache hit req/s vs raw ASGI constant", f"{near.rps:.0f}", f"{const.rps:.0f}", f"{near.rps / const.rps:.2f}",
          ">= 0.3", near.rps / const.rps >= 0.3)
    t.add("10. near-cache p50 / p99 ms vs constant", f"{near.p50_ms:.2f} / {near.p99_ms:.2f}",
          f"{const.p50_ms:.2f} / {const.p99_ms:.2f}", f"{near.p50_ms / const.p50_ms:.2f} / {near.p99_ms / const.p99_ms:.2f}",
          "p99 <= 1.0x", near.p99_ms <= const.p99_ms)
    t.add("10. hit path on 3-master cluster vs single node", f"{clu.rps:.0f}", f"{hit.rps:.0f}", f"{clu.rps / hit.rps:.2f}",
          ">= 0.9", clu.rps / hit.rps >= 0.9)
    t.add("10. hit path p99 ms, cluster vs single node", f"{clu.p99_ms:.2f}", f"{hit.p99_ms:.2f}", f"{clu.p99_ms / hit.p99_ms:.2f}",
          "(latency ratio)", None)
    t.add("10. hit path --workers 2 vs 1 (wrk on the same 2 cores)", f"{w2.rps:.0f}", f"{hit.rps:.0f}", f"{w2.rps / hit.rps:.2f}",
          "(report)", None)
    # One access line per request: the hit-path process's lines against its own request counter, over one more run.
    route = "/v1/{tenant}/rooms/{room_id}/members/{user_id}"
    before = (access_lines(b.logs["off"], route), requests_counted(b.api["off"], route))
    wrk(b.api["off"] + path, seconds=b.args.seconds, connections=32, headers=b.auth)
    time.sleep(0.5)  # the buffer is written within 50 ms
    written = access_lines(b.logs["off"], route) - before[0]
    counted = requests_counted(b.api["off"], route) - before[1]
    t.add("10. access lines written vs requests counted (/metrics)", str(written), str(counted),
          f"{written / max(1, counted):.3f}", "1 per request", written == counted)
    b.notes.append("issue 10 medians: " + json.dumps({k: [round(v.rps), v.p50_ms, v.p99_ms] for k, v in res.items()}))
