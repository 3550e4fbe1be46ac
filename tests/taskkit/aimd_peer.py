"""A second worker process for the AIMD test: `python -m tests.taskkit.aimd_peer <redis_url> <prefix>` holds
one AimdController and answers one command per stdin line with one stdout line: `current`, `ok`,
`slow_down` → the limit; `acquire N` → seconds the N acquires took."""

from __future__ import annotations

import asyncio
import sys
import time

from redis.asyncio import Redis

from taskkit import AimdController, AimdPolicy
from taskkit.keys import Keys

POLICY = AimdPolicy(initial=100, min=20, max=200, add_per_s=10, beta=0.5, cooldown_s=0.5)


async def main(redis_url: str, prefix: str) -> None:
    redis = Redis.from_url(redis_url)
    ctl = AimdController(redis, "milvus", keys=Keys(prefix), policy=POLICY)
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    try:
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            op, *arg = line.split()
            if op == "acquire":
                t0 = time.monotonic()
                for _ in range(int(arg[0])):
                    await ctl.acquire()
                print(f"{time.monotonic() - t0:.4f}", flush=True)
            else:
                print(await getattr(ctl, op)(), flush=True)
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
