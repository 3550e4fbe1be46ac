"""Zero lost work, checked at the end of `hotpath loadtest` against Milvus, S3 and the cache.

- index: every accepted event's message has, in Milvus, the version of its last accepted event (or of a later
  event whose answer was lost, which may have been enqueued too); a message whose last event was a delete is gone.
- uploads: every accepted upload has thumbnails, or a dead-letter record with a reason.
- changes: every change event was applied (2xx), and the cache now answers what the origin holds for every
  user and membership the changes touched (a lost event would leave the cache's old value behind).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from hotpath.loadtest.stack import QUEUES, TASKKIT_PREFIX, LoadStack

MAX_EXAMPLES = 10


def read_journal(out: Path) -> list[dict]:
    recs = []
    for p in sorted((out / "journal").glob("*.jsonl")):
        for line in p.read_text().splitlines():
            if line.strip():
                try:
                    recs.append(json.loads(line))
                except json.JSONDecodeError:  # a process killed mid-line: its last line only
                    continue
    return recs


async def drain(stack: LoadStack, within_s: float) -> dict[str, Any]:
    """Wait until every queue is empty (no ready, retrying or running job); returns what was left, if anything."""
    import redis.asyncio as aioredis

    from taskkit.keys import Keys

    keys = Keys(TASKKIT_PREFIX)
    r = aioredis.Redis.from_url(stack.urls["redis"], socket_timeout=2)
    t0 = time.monotonic()
    left: dict[str, int] = {}
    try:
        while time.monotonic() - t0 < within_s:
            try:
                left = {q: await r.zcard(keys.arq_queue(q)) for q in QUEUES}
                left["running"] = len([k async for k in r.scan_iter(match=f"arq:in-progress:{TASKKIT_PREFIX}*")])
            except (aioredis.RedisError, OSError):
                left = {"redis": -1}
            if not any(left.values()):
                return {"drained": True, "drain_s": round(time.monotonic() - t0, 1)}
            await asyncio.sleep(0.5)
    finally:
        await r.aclose()
    return {"drained": False, "drain_s": round(time.monotonic() - t0, 1), "left": left}


def _expected_index(recs: list[dict]) -> dict[tuple[str, str], tuple[dict, list[dict]]]:
    """(tenant, message) → (last accepted event, later events whose answer was lost)."""
    by_msg: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in recs:
        if r["k"] == "index" and r["status"] in ("accepted", "maybe"):
            by_msg[(r["tenant"], r["id"])].append(r)
    out = {}
    for key, evs in by_msg.items():
        evs.sort(key=lambda e: e["version"])
        accepted = [e for e in evs if e["status"] == "accepted"]
        if not accepted:
            continue
        last = accepted[-1]
        out[key] = (last, [e for e in evs if e["status"] == "maybe" and e["version"] > last["version"]])
    return out


def verify_index(stack: LoadStack, recs: list[dict]) -> dict[str, Any]:
    from pymilvus import MilvusClient

    from index_worker.store import message_pk

    expected = _expected_index(recs)
    collection = stack.app_env.get("HOTPATH_MILVUS_COLLECTION", "hotpath_messages")
    client = MilvusClient(uri=stack.urls["milvus"], timeout=30)
    found: dict[str, int] = {}
    pks = [message_pk(t, m) for t, m in expected]
    state = str(client.get_load_state(collection).get("state", ""))
    if "Loaded" not in state:  # Milvus restarted: the collection comes back released until someone loads it
        client.load_collection(collection, timeout=60)
    try:
        for i in range(0, len(pks), 500):
            chunk = pks[i:i + 500]
            for row in client.query(collection, filter=f"pk in {json.dumps(chunk)}", output_fields=["pk", "version"]):
                found[row["pk"]] = int(row["version"])
    finally:
        client.close()
    wrong = []
    for (tenant, mid), (last, maybes) in expected.items():
        have = found.get(message_pk(tenant, mid))
        allowed = {None if e["op"] == "delete" else e["version"] for e in [last, *maybes]}
        if have not in allowed:
            wrong.append({"tenant": tenant, "message": mid, "expected": sorted(allowed, key=str), "found": have})
    return {"collection_state_before_check": state, "accepted_messages": len(expected), "accepted_events": sum(1 for r in recs if r["k"] == "index"
                                                                      and r["status"] == "accepted"),
            "lost": len(wrong), "examples": wrong[:MAX_EXAMPLES]}


async def verify_uploads(stack: LoadStack, recs: list[dict]) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from taskkit.deadletter import DeadLetterQueue
    from taskkit.keys import Keys
    from thumb_worker.storage import make_minio

    s = stack.app_env
    accepted = [r for r in recs if r["k"] == "upload" and r["status"] == "accepted"]
    r = aioredis.Redis.from_url(stack.urls["redis"])
    dead: dict[str, str] = {}
    try:
        async for rec in DeadLetterQueue(r, Keys(TASKKIT_PREFIX)).iter("thumb"):
            key = rec.args[1] if len(rec.args) > 1 else rec.kwargs.get("key")
            dead[str(key)] = f"{rec.error_type}: {rec.message}" if rec.message else ""  # no reason: not counted
    finally:
        await r.aclose()
    client = make_minio(stack.urls["s3"], *stack.s3_keys, region="us-east-1")
    bucket = s.get("HOTPATH_THUMBNAILS_BUCKET", "thumbnails")

    def has_thumbs(key: str) -> bool:
        return any(True for _ in client.list_objects(bucket, prefix=f"{key}/"))

    thumbed = bad_dead = good_dead = 0
    lost = []
    for rec in accepted:
        if await asyncio.to_thread(has_thumbs, rec["key"]):
            thumbed += 1
        elif dead.get(rec["key"]):
            if rec["bad"]:
                bad_dead += 1
            else:
                good_dead += 1
        else:
            lost.append({"key": rec["key"], "bad": rec["bad"], "dead_letter": rec["key"] in dead})
    return {"accepted": len(accepted), "thumbnailed": thumbed, "dead_lettered_bad": bad_dead,
            "dead_lettered_good": good_dead, "lost": len(lost), "examples": lost[:MAX_EXAMPLES],
            "dead_letter_reasons": sorted(set(dead.values()))[:5]}


async def verify_changes(stack: LoadStack, recs: list[dict], max_users: int = 300) -> dict[str, Any]:
    import asyncpg
    import httpx

    changes = [r for r in recs if r["k"] == "change"]
    not_applied = [r for r in changes if not r["applied"]]
    users: set[tuple[str, str]] = set()
    pairs: set[tuple[str, str, str]] = set()
    for c in changes:
        ev = c["event"]
        if "user_id" in ev:
            users.add((c["tenant"], ev["user_id"]))
        if ev["type"].startswith("member."):
            pairs.add((c["tenant"], ev["room_id"], ev["user_id"]))
    users_l = sorted(users)[:max_users]
    conn = await asyncpg.connect(stack.pg_url.replace("postgresql+asyncpg://", "postgresql://"), timeout=10,
                                 server_settings={"search_path": stack.schema})
    mismatches = []
    try:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=10,
                                     headers={"Authorization": f"Bearer {stack.token('cache:read')}"}) as http:
            for tenant, user in users_l:
                rows = await conn.fetch(
                    "SELECT m.room_id, GREATEST(0, r.last_seq - COALESCE(rs.last_read_seq, 0)) FROM room_members m "
                    "JOIN rooms r ON r.tenant_id = m.tenant_id AND r.room_id = m.room_id LEFT JOIN read_states rs ON "
                    "rs.tenant_id = m.tenant_id AND rs.room_id = m.room_id AND rs.user_id = m.user_id "
                    "WHERE m.tenant_id = $1 AND m.user_id = $2 AND NOT r.deleted", tenant, user)
                truth = {row[0]: int(row[1]) for row in rows}
                resp = await http.get(f"/v1/{tenant}/users/{user}/unread")
                got = resp.json().get("rooms") if resp.status_code == 200 else f"HTTP {resp.status_code}"
                if got != truth:
                    mismatches.append({"what": "unread", "tenant": tenant, "user": user, "cache": got, "origin": truth})
            for tenant, room, user in sorted(pairs)[:max_users]:
                member = await conn.fetchval("SELECT 1 FROM room_members WHERE tenant_id=$1 AND room_id=$2 AND "
                                             "user_id=$3", tenant, room, user)
                resp = await http.get(f"/v1/{tenant}/rooms/{room}/members/{user}")
                if (resp.status_code == 200) != bool(member) or resp.status_code not in (200, 404):
                    mismatches.append({"what": "membership", "tenant": tenant, "room": room, "user": user,
                                       "cache": resp.status_code, "origin": bool(member)})
    finally:
        await conn.close()
    return {"changes": len(changes), "not_applied": len(not_applied), "users_checked": len(users_l),
            "memberships_checked": min(len(pairs), max_users), "mismatches": len(mismatches),
            "lost": len(not_applied) + len(mismatches),
            "examples": (mismatches + [{"not_applied": r["event"]} for r in not_applied])[:MAX_EXAMPLES]}


async def verify_all(stack: LoadStack, out: Path) -> dict[str, Any]:
    """Every check, each reported on its own: one that cannot run is a failed check (lost = None), not a crash."""
    recs = read_journal(out)
    checks = {"index": lambda: asyncio.to_thread(verify_index, stack, recs),
              "uploads": lambda: verify_uploads(stack, recs), "changes": lambda: verify_changes(stack, recs)}
    result = {}
    for name, check in checks.items():
        try:
            result[name] = await check()
        except Exception as exc:
            result[name] = {"lost": None, "error": f"{type(exc).__name__}: {exc}"[:500]}
    return result
