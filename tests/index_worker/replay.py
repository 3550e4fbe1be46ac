"""Event logs for the replay tests, and a runner that applies a log through guard + store + embedder until
nothing is busy. Run as a process: `python -m tests.index_worker.replay LOG.json` (two at once in a test)."""

from __future__ import annotations

import asyncio
import json
import random
import sys

from index_worker.indexer import Indexer, IndexEvent


def event_log(tenants: list[str], messages: int, seed: int) -> tuple[list[IndexEvent], dict[tuple[str, str], IndexEvent]]:
    """Every version of every message (edits; some deleted, some re-created after a delete), and the expected
    final upsert of each live message."""
    rng = random.Random(seed)
    log: list[IndexEvent] = []
    final: dict[tuple[str, str], IndexEvent] = {}
    for tenant in tenants:
        for i in range(messages):
            mid = f"m{i}"
            last: IndexEvent | None = None
            for version in range(1, rng.randint(1, 4) + 1):
                fate = rng.random()
                if version > 1 and fate < 0.2:
                    last = IndexEvent("delete", tenant, message_id=mid, version=version)
                else:
                    last = IndexEvent("upsert", tenant, f"r{i % 3}", mid, version, f"{tenant} message {i} v{version}",
                                      f"u{i % 5}", 1_700_000_000_000 + version)
                log.append(last)
            if last is not None and last.op == "upsert":
                final[(tenant, mid)] = last
    return log, final


def shuffled_with_duplicates(log: list[IndexEvent], seed: int) -> list[IndexEvent]:
    rng = random.Random(seed)
    out = log + rng.sample(log, len(log) // 2)
    rng.shuffle(out)
    return out


async def apply_all(indexer: Indexer, events: list[IndexEvent], batch: int, seed: int) -> int:
    """Apply in batches; busy events are retried after their lease's remaining time. Returns busy retries."""
    rng = random.Random(seed)
    pending = list(events)
    retries = 0
    while pending:
        size = rng.randint(1, batch)
        chunk, pending = pending[:size], pending[size:]
        result = await indexer.apply(chunk)
        assert not result.rejected and not result.lost, (result.rejected, result.lost)
        if result.busy:
            retries += len(result.busy)
            await asyncio.sleep(min(result.retry_after_s, 0.05))
            pending += result.busy
    return retries


def to_json(events: list[IndexEvent]) -> str:
    return json.dumps([e.__dict__ for e in events])


async def _main(path: str, redis_url: str, prefix: str, milvus_uri: str, collection: str, dim: int, seed: int) -> None:
    import redis.asyncio as aioredis

    from index_worker.embed.hashing import HashEmbedder
    from index_worker.guard import VersionGuard
    from index_worker.store import MilvusStore

    with open(path) as f:
        events = [IndexEvent(**e) for e in json.load(f)]
    r = aioredis.Redis.from_url(redis_url)
    store = MilvusStore(milvus_uri, collection=collection, dim=dim, timeout_s=10, text_max_bytes=2000)
    await store.ensure_collection()
    indexer = Indexer(VersionGuard(r, prefix, lease_ttl_s=90), store, HashEmbedder(dim))
    await apply_all(indexer, events, batch=16, seed=seed)
    await store.close()
    await r.aclose()
    print("done", len(events))


if __name__ == "__main__":
    path, redis_url, prefix, milvus_uri, collection, dim, seed = sys.argv[1:8]
    asyncio.run(_main(path, redis_url, prefix, milvus_uri, collection, int(dim), int(seed)))
