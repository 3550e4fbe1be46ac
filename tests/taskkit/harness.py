"""Test harness for taskkit: an in-process ARQ worker that starts and stops cleanly, a worker
subprocess run by the `arq` command, and polling."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from arq.worker import Worker

from taskkit.fastworker import create_worker

# Which worker `running_worker` builds when not told: ARQ's own Worker (False) or taskkit's FastWorker
# (True). Test modules that run under both set it from a parametrized fixture.
FAST = False


@contextlib.asynccontextmanager
async def running_worker(settings_cls: type, *, fast: bool | None = None, **overrides: object) -> AsyncIterator[Worker]:
    """Run a worker built from `settings_cls` inside this event loop (ARQ's Worker, or FastWorker with
    `fast`, default the module's FAST); stop it on exit."""
    overrides.setdefault("poll_delay", 0.02)
    w = create_worker(settings_cls, fast=FAST if fast is None else fast, handle_signals=False, **overrides)
    main = asyncio.create_task(w.async_run())
    try:
        yield w
    finally:
        main.cancel()
        await asyncio.gather(main, return_exceptions=True)
        jobs = list(w.tasks.values())
        for t in jobs:
            t.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        w.tasks.clear()
        await w.close()


async def wait_until(cond, within: float = 10.0, interval: float = 0.02) -> None:
    """Poll an async or sync condition until true; AssertionError on timeout."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        r = cond()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


ROOT = Path(__file__).resolve().parents[2]


def start_app_worker(redis_url: str, prefix: str, log: IO[bytes], *, concurrency: int = 20,
                     sleep_s: float = 0.02, fast: bool = False) -> subprocess.Popen:
    """`arq tests.taskkit.app_worker.WorkerSettings` in its own process (so a test may SIGKILL it);
    with `fast`, `python -m tests.taskkit.app_worker` (taskkit's FastWorker on uvloop, as `hotpath worker`)."""
    env = dict(os.environ, TK_TEST_REDIS_URL=redis_url, TK_TEST_PREFIX=prefix,
               TK_TEST_CONCURRENCY=str(concurrency), TK_TEST_SLEEP=str(sleep_s))
    if fast:
        cmd = [sys.executable, "-m", "tests.taskkit.app_worker"]
    else:
        cmd = [str(Path(sys.executable).parent / "arq"), "tests.taskkit.app_worker.WorkerSettings"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
