"""The change-event writer of `hotpath loadtest`, in its own process: dbman's side of a chat write.

Each change is committed to the origin's PostgreSQL first (a message, a read, a member added or removed), then
its change event is POSTed to the API, resent with backoff until applied (an outbox relay's at-least-once),
for at most `relay_s`. Why not in Locust: the origin is PostgreSQL, and asyncpg does not run under gevent.
Run: `python -m hotpath.loadtest.writer CONFIG.json`; bounded by count (rate × duration) and by time.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

import asyncpg
import httpx

from hotpath.loadtest.universe import Universe, zipf_index


class Writer:
    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.u = Universe.load(cfg["universe"])
        out = Path(cfg["out"])
        (out / "requests").mkdir(parents=True, exist_ok=True)
        (out / "journal").mkdir(parents=True, exist_ok=True)
        self.req = open(out / "requests" / f"writer-{os.getpid()}.csv", "a")
        self.journal = open(out / "journal" / f"writer-{os.getpid()}.jsonl", "a")
        self.rng = random.Random()
        self.n = 0

    async def change(self, conn) -> tuple[str, dict]:
        """Commit one change to the origin; returns (tenant, its event)."""
        u, rng = self.u, self.rng
        tenant = rng.choice(u.tenants)
        room = u.room(zipf_index(rng, u.rooms))
        self.n += 1
        eid = f"lt-{os.getpid()}-{self.n}"
        r = rng.random()
        async with conn.transaction():
            if r < 0.55:
                seq = await conn.fetchval("UPDATE rooms SET last_seq = last_seq + 1 WHERE tenant_id=$1 AND room_id=$2 "
                                          "RETURNING last_seq", tenant, room)
                return tenant, {"id": eid, "type": "message.created", "room_id": room, "seq": seq}
            members = await conn.fetch("SELECT user_id FROM room_members WHERE tenant_id=$1 AND room_id=$2",
                                       tenant, room)
            members = [m[0] for m in members]
            if r < 0.9 and members:
                user = rng.choice(members)
                seq = await conn.fetchval("SELECT last_seq FROM rooms WHERE tenant_id=$1 AND room_id=$2", tenant, room)
                seq = max(0, seq - rng.randint(0, 3))
                await conn.execute(
                    "INSERT INTO read_states (tenant_id, room_id, user_id, last_read_seq) VALUES ($1,$2,$3,$4) "
                    "ON CONFLICT (tenant_id, room_id, user_id) DO UPDATE SET "
                    "last_read_seq = GREATEST(read_states.last_read_seq, EXCLUDED.last_read_seq)",
                    tenant, room, user, seq)
                return tenant, {"id": eid, "type": "read.updated", "room_id": room, "user_id": user, "seq": seq}
            if r < 0.95 or len(members) < 4:
                user = u.user(zipf_index(rng, u.users))
                if user in members:
                    user = u.user(rng.randrange(u.users))
                added = await conn.execute("INSERT INTO room_members (tenant_id, room_id, user_id, role) "
                                           "VALUES ($1,$2,$3,'member') ON CONFLICT DO NOTHING", tenant, room, user)
                kind = "member.added" if added.endswith("1") else "member.role_changed"
            else:
                user = rng.choice(members)
                await conn.execute("DELETE FROM room_members WHERE tenant_id=$1 AND room_id=$2 AND user_id=$3",
                                   tenant, room, user)
                kind = "member.removed"
            version = await conn.fetchval("UPDATE rooms SET members_version = members_version + 1 "
                                          "WHERE tenant_id=$1 AND room_id=$2 RETURNING members_version", tenant, room)
            ev = {"id": eid, "type": kind, "room_id": room, "user_id": user, "version": version}
            if kind != "member.removed":
                ev["role"] = "member"
            return tenant, ev

    async def relay(self, http: httpx.AsyncClient, tenant: str, ev: dict) -> None:
        """POST the event until the API applies it (2xx), with backoff, for at most relay_s."""
        deadline = time.monotonic() + float(self.cfg.get("relay_s", 60))
        pause = 0.1
        applied = False
        attempts = 0
        while not applied and time.monotonic() < deadline:
            attempts += 1
            t0 = time.perf_counter()
            status = 0
            try:
                resp = await http.post(f"/v1/{tenant}/events", json={"events": [ev]})
                status = resp.status_code
            except httpx.HTTPError:
                pass
            ms = (time.perf_counter() - t0) * 1000
            ok = status == 200 or (400 <= status < 500 and status != 408)
            self.req.write(f"{time.time():.3f},events,{ms:.2f},{1 if ok else 0},{status}\n")
            if status == 200:
                applied = True
            elif 400 <= status < 500 and status not in (408, 429):
                break  # a refused event is a bug of this writer: reported as not applied
            else:
                await asyncio.sleep(pause * random.uniform(0.5, 1.0))
                pause = min(2.0, pause * 2)
        self.journal.write(json.dumps({"k": "change", "tenant": tenant, "event": ev, "applied": applied,
                                       "attempts": attempts, "t": time.time()}) + "\n")

    async def run(self) -> None:
        cfg = self.cfg
        rate, duration = float(cfg["rate"]), float(cfg["duration_s"])
        total = int(rate * duration)
        pool = await asyncpg.create_pool(cfg["pg_dsn"], min_size=1, max_size=4, timeout=5,
                                         server_settings={"search_path": cfg["schema"]})
        limits = httpx.Limits(max_connections=32)
        relays: set[asyncio.Task] = set()
        async with httpx.AsyncClient(base_url=cfg["api"], headers={"Authorization": f"Bearer {cfg['token']}"},
                                     timeout=httpx.Timeout(5.0, connect=2.0), limits=limits) as http:
            t0 = time.monotonic()
            for i in range(total):
                wait = t0 + i / rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if time.monotonic() - t0 > duration + 5:
                    break  # fell behind (origin slow): stop on time rather than catch up
                try:
                    async with pool.acquire() as conn:
                        tenant, ev = await self.change(conn)
                except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
                    self.req.write(f"{time.time():.3f},origin write,0,0,0\n")
                    print(f"writer: origin write failed: {exc}", file=sys.stderr)
                    continue
                t = asyncio.create_task(self.relay(http, tenant, ev))
                relays.add(t)
                t.add_done_callback(relays.discard)
                if i % 20 == 0:
                    self.req.flush()
                    self.journal.flush()
            await asyncio.gather(*relays)
        await pool.close()
        self.req.close()
        self.journal.close()


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    asyncio.run(Writer(cfg).run())


if __name__ == "__main__":
    main()
