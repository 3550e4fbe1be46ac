"""`hotpath api --workers 2`: two processes serve one port, each with its own near cache, all invalidated by the
broadcast; /metrics reports the whole server; SIGTERM stops every process.

Which process answered a keep-alive connection is read from the access log: each process names itself
`api:<pid>` in its lines, and each probe carries its own X-Request-ID.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from cacheman.auth import mint_token
from cacheman.origin.sql import init_schema
from tests.services import free_port, wait_port

SECRET = "api-workers-secret-0123456789-0123456789"
T = "acme"
ROOM, USER = "room-01", "user-005"  # a demo membership (the room's owner)
BIN = Path(sys.executable).parent
NEAR_TTL_S = 30.0  # so a change seen at once was the broadcast, not the near cache's own expiry


def _log_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose (only its parent's wait is missing)
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def api_workers(tmp_path, redis_url, key_prefix):
    db = f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}"
    asyncio.run(init_schema(db, demo=True))
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")  # an earlier run's file: must be cleaned at start
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTPATH_")}
    env.update(HOTPATH_REDIS_URL=redis_url, HOTPATH_REDIS_PREFIX=key_prefix.rstrip(":"),
               HOTPATH_TASKKIT_PREFIX=key_prefix + "tk:", HOTPATH_ORIGIN_URL=db,
               HOTPATH_JWT_KEYS=json.dumps({"k1": SECRET}), HOTPATH_RATE_LIMIT_PER_S="0", HOTPATH_EMBEDDER="hash",
               HOTPATH_NEAR_CACHE_ENABLED="true", HOTPATH_NEAR_CACHE_TTL_S=str(NEAR_TTL_S),
               HOTPATH_LOG_LEVEL="INFO", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    log = tmp_path / "api.log"
    proc = subprocess.Popen([str(BIN / "hotpath"), "api", "--workers", "2", "--port", str(port)], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(log, "wb"), start_new_session=True)
    try:
        wait_port("127.0.0.1", port, timeout=60, proc=proc)
        yield proc, f"http://127.0.0.1:{port}", log, metrics_dir
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the parent and its workers only
            proc.wait(10)


async def _proc_of(client: httpx.AsyncClient, url: str, headers: dict, log: Path) -> str:
    """Send one request on `client`'s connection and read from the log which process answered it."""
    rid = uuid.uuid4().hex
    r = await client.get(url, headers={**headers, "X-Request-ID": rid})
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in _log_lines(log):
            if line.get("request_id") == rid:
                return line["proc"]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no access-log line for request {rid}")


async def test_two_processes_serve_share_invalidation_and_metrics_and_stop_on_sigterm(api_workers):
    proc, api, log, metrics_dir = api_workers
    token = mint_token(SECRET, kid="k1", sub="chat", tenants=[T], scope="cache:read cache:write", ttl_s=600)
    h = {"Authorization": f"Bearer {token}"}
    member_url = f"{api}/v1/{T}/rooms/{ROOM}/members/{USER}"
    assert not (metrics_dir / "counter_999999.db").exists(), "the metrics dir was not cleaned at start"

    # One keep-alive connection per client. The port opens (the parent binds it) before both processes have
    # started, so new connections are opened, a few at a time, until two of them landed on different processes.
    clients: list[httpx.AsyncClient] = []
    by_proc: dict[str, httpx.AsyncClient] = {}
    member_requests = 0
    try:
        deadline = time.monotonic() + 60
        while len(by_proc) < 2:
            assert time.monotonic() < deadline, f"every connection went to {set(by_proc)}"
            batch = [httpx.AsyncClient(limits=httpx.Limits(max_connections=1), timeout=10) for _ in range(8)]
            clients += batch
            procs = await asyncio.gather(*(_proc_of(c, member_url, h, log) for c in batch))
            member_requests += len(batch)
            for name, c in zip(procs, batch, strict=True):
                by_proc.setdefault(name, c)
        (name_a, a), (name_b, b) = sorted(by_proc.items())
        pids = {int(n.split(":")[1]) for n in (name_a, name_b)}
        assert proc.pid not in pids and len(pids) == 2

        # B has the membership in its near cache (hit twice); A applies a member.removed with the next version.
        for _ in range(2):
            r = await b.get(member_url, headers=h)
            assert r.status_code == 200 and r.json()["role"] == "owner", r.text
        member_requests += 2
        version = (await a.get(f"{api}/v1/{T}/rooms/{ROOM}/members", headers=h)).json()["version"]
        event = {"id": f"e-{uuid.uuid4().hex[:8]}", "type": "member.removed", "room_id": ROOM, "user_id": USER,
                 "version": version + 1}
        posted = await a.post(f"{api}/v1/{T}/events", json={"events": [event]}, headers=h)
        assert posted.status_code == 200 and posted.json()["applied"] == 1, posted.text
        applied = time.monotonic()
        while True:  # B must drop it on the broadcast, long before its near-cache TTL (NEAR_TTL_S) would
            r = await b.get(member_url, headers=h)
            member_requests += 1
            if r.status_code == 404:
                break
            assert r.status_code == 200, r.text
            assert time.monotonic() - applied < 1.0, "process B still answers from its near cache 1 s after the event"
            await asyncio.sleep(0.01)
        seen_after_s = time.monotonic() - applied
        assert r.json()["type"] == "urn:hotpath:error:not-member", r.text
        print(f"\nthe event applied through {name_a} was seen through {name_b} after {seen_after_s * 1000:.0f} ms")

        # /metrics, through either process, counts the requests of both.
        route = "/v1/{tenant}/rooms/{room_id}/members/{user_id}"
        for c in (a, b):
            text = (await c.get(f"{api}/metrics")).text
            counted = sum(float(m.group(1)) for m in re.finditer(
                r'^hotpath_http_requests_total\{[^}]*route="' + re.escape(route) + r'"[^}]*\} (\S+)$', text, re.M))
            assert counted == member_requests, (counted, member_requests)
    finally:
        for c in clients:
            await c.aclose()

    # SIGTERM to the parent drains and stops both processes; nothing is left.
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == 0, log.read_text()[-2000:]
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"processes {[p for p in pids if _alive(p)]} outlived the parent"
        time.sleep(0.05)
