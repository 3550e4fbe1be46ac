"""Stampede: 1,000 concurrent misses on one key, spread over TWO API processes (real uvicorn subprocesses on
the same Redis — a single node, then a Cluster), make exactly one origin call, counted at the origin (the dbman
double's /_stats)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from cacheman.auth import mint_token
from cacheman.origin.sql import init_schema
from tests.services import free_port, wait_port

SECRET = "stampede-secret-0123456789-0123456789-0"
T = "acme"


def _spawn(args: list[str], env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_port("127.0.0.1", port, timeout=30, proc=proc)
    except (RuntimeError, TimeoutError) as exc:
        proc.kill()
        raise AssertionError(f"{args[:3]} did not start: {exc}; stderr: {proc.stderr.read().decode()[-2000:]}") from None
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# The cache API alone, served as `hotpath api` serves it (cacheman/server.py): until the task queues get a Redis of
# their own (issue 10, point 2), `hotpath api` also opens the index intake's queue on HOTPATH_REDIS_URL, which a
# Cluster cannot be (ARQ's keys span slots).
_CACHE_API_ONLY = ("from cacheman.server import serve; from hotpath.settings import ApiSettings; "
                   "s = ApiSettings(); s.port = {port}; serve(s)")


def _api_command(hotpath: str, port: int, cluster: bool) -> list[str]:
    if cluster:
        return [sys.executable, "-c", _CACHE_API_ONLY.format(port=port)]
    return [hotpath, "api", "--port", str(port)]


@pytest.fixture
def stack(tmp_path, cache_redis, key_prefix):
    db = f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}"
    asyncio.run(init_schema(db, demo=True))
    origin_port = free_port()
    procs = [_spawn([sys.executable, "-m", "cacheman.origin.double", "--origin-url", db, "--port", str(origin_port)],
                    dict(os.environ), origin_port)]
    api_ports = [free_port(), free_port()]
    hotpath = str(Path(sys.executable).with_name("hotpath"))
    try:
        for port in api_ports:
            env = dict(
                os.environ,
                **cache_redis.env(),  # the single-node test Redis, or the local Cluster
                HOTPATH_REDIS_PREFIX=key_prefix.rstrip(":"),
                HOTPATH_ORIGIN_URL=f"http://127.0.0.1:{origin_port}",
                HOTPATH_JWT_KEYS=json.dumps({"t1": SECRET}),
                HOTPATH_RATE_LIMIT_PER_S="0",
                HOTPATH_CACHE_LEASE_WAIT_S="5",
                HOTPATH_CACHE_LEASE_TTL_MS="5000",
                HOTPATH_LOG_LEVEL="WARNING",
            )
            procs.append(_spawn(_api_command(hotpath, port, cache_redis.cluster), env, port))
        yield f"http://127.0.0.1:{origin_port}", [f"http://127.0.0.1:{p}" for p in api_ports]
    finally:
        for p in procs:
            _stop(p)


async def test_1000_concurrent_misses_over_two_processes_make_one_origin_call(stack):
    origin_url, apis = stack
    headers = {"Authorization": "Bearer " + mint_token(SECRET, kid="t1", sub="chat", tenants=[T], scope="cache:read", ttl_s=600)}
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        # Warm each process's connections and token cache on another key, then make the origin slow so all
        # 1,000 requests overlap one fill.
        for api in apis:
            assert (await client.get(f"{api}/v1/{T}/rooms/room-09", headers=headers)).status_code == 200
        assert (await client.post(f"{origin_url}/_control", json={"delay_ms": 400})).status_code == 200
        assert (await client.post(f"{origin_url}/_stats/reset")).status_code == 200

        url = "/v1/{t}/rooms/room-01/members/user-005"  # a member (the owner), so each answer carries the role
        started = time.monotonic()
        responses = await asyncio.gather(*(client.get(apis[i % 2] + url.format(t=T), headers=headers) for i in range(1000)))
        elapsed = time.monotonic() - started
        stats = (await client.get(f"{origin_url}/_stats")).json()

    assert {r.status_code for r in responses} == {200}
    bodies = {r.content for r in responses}  # every caller got the same answer, byte for byte
    assert [orjson.loads(b) for b in bodies] == [{"room_id": "room-01", "user_id": "user-005", "role": "owner"}]
    cache_status = {r.headers["x-cache"] for r in responses}
    assert "miss" in cache_status and cache_status <= {"miss", "hit"}, cache_status
    # Age: 0 on the fill's own answers; a hit counts the whole seconds since that fill, inside this burst.
    assert {r.headers["age"] for r in responses if r.headers["x-cache"] == "miss"} == {"0"}
    assert max(int(r.headers["age"]) for r in responses) <= math.ceil(elapsed)
    assert stats["calls"] == 1, stats
    assert stats["by_op"].get("get_members") == 1, stats
