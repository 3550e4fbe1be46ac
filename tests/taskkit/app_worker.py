"""A worker app for subprocess tests, run as `arq tests.taskkit.app_worker.WorkerSettings` (ARQ's Worker)
or `python -m tests.taskkit.app_worker` (taskkit's FastWorker on uvloop).

Configured from TK_TEST_* environment variables (a test reads its environment; taskkit never does); with
TK_TEST_SENTINELS (`host:port,…`) its Redis is the master TK_TEST_SENTINEL_MASTER that those Sentinels name.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from taskkit import RetryPolicy, task, worker_settings
from taskkit.connection import QueueRedis, parse_sentinels

PREFIX = os.environ.get("TK_TEST_PREFIX", "hptest:unset:")
QUEUE = "app"
SLEEP_S = float(os.environ.get("TK_TEST_SLEEP", "0.02"))
LEDGER_LUA = (Path(__file__).parent / "effect_ledger.lua").read_text()


def _keys():
    return f"{PREFIX}ledger", f"{PREFIX}total", f"{PREFIX}executions", f"{PREFIX}runs"


@task(queue=QUEUE, timeout=1.0, retry=RetryPolicy(max_attempts=8, base_s=0.05, cap_s=0.5))
async def apply_effect(ctx, n: int, amount: int) -> int:
    """Count the execution (in total and per job), work a little, then apply the effect through the
    idempotent ledger."""
    redis = ctx["redis"]
    ledger, total, executions, runs = _keys()
    async with redis.pipeline(transaction=True) as p:
        p.incr(executions)
        p.hincrby(runs, ctx["job_id"], 1)
        await p.execute()
    await asyncio.sleep(SLEEP_S)
    return await redis.eval(LEDGER_LUA, 2, ledger, total, ctx["job_id"], amount)


WorkerSettings = worker_settings(
    QUEUE, [apply_effect],
    redis_settings=QueueRedis(url=os.environ.get("TK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
                              sentinels=parse_sentinels(os.environ.get("TK_TEST_SENTINELS", "")),
                              sentinel_master=os.environ.get("TK_TEST_SENTINEL_MASTER", "mymaster")).arq_settings(),
    prefix=PREFIX, concurrency=int(os.environ.get("TK_TEST_CONCURRENCY", "20")), poll_delay_s=0.005,
    health_interval_s=0.5,
)


if __name__ == "__main__":
    import logging

    from taskkit.fastworker import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")  # like the arq command
    run_worker(WorkerSettings)
