"""The Locust file of `hotpath loadtest`: the chat-like mix against the API, run ONLY as a `locust` subprocess.

Locust patches the process with gevent, so nothing else of hotpath runs in it. Each user class has a fixed count
and a constant throughput, so the stated rate is users × per-user rate; LoadTestShape holds it for the stated
time. Every request is also appended to requests/<pid>.csv (time, op, ms, ok, status) and every accepted unit
of work to journal/<pid>.jsonl, which the runner reads for the SLOs and the zero-lost-work check.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import time
from pathlib import Path

from locust import LoadTestShape, constant_throughput, events, task
from locust.contrib.fasthttp import FastHttpSession, FastHttpUser

from hotpath.loadtest.universe import Universe, zipf_index

CFG = json.loads(os.environ.get("LT_CONFIG", "{}"))
OUT = Path(CFG.get("out", "."))
U = Universe.load(CFG["universe"]) if CFG.get("universe") else None
AUTH = {"Authorization": f"Bearer {CFG.get('token', '')}"}
WORDS = ("deploy cache review lunch standup latency budget ticket release rollback metrics alert design draft "
         "merge branch coffee pager incident retro roadmap launch invoice customer").split()


class _Files:
    """Per-process append-only logs, flushed every second and at exit."""

    def __init__(self) -> None:
        self.req = None
        self.journal = None
        self.last_flush = 0.0

    def open(self) -> None:
        if self.req is None:
            (OUT / "requests").mkdir(parents=True, exist_ok=True)
            (OUT / "journal").mkdir(parents=True, exist_ok=True)
            self.req = open(OUT / "requests" / f"locust-{os.getpid()}.csv", "a")
            self.journal = open(OUT / "journal" / f"locust-{os.getpid()}.jsonl", "a")

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.req and (force or now - self.last_flush > 1.0):
            self.req.flush()
            self.journal.flush()
            self.last_flush = now


FILES = _Files()
atexit.register(lambda: FILES.flush(force=True))


@events.request.add_listener
def _on_request(request_type, name, response_time, response_length, response=None, exception=None, **kw):
    FILES.open()
    status = getattr(response, "status_code", 0) or 0
    FILES.req.write(f"{time.time():.3f},{name},{response_time:.2f},{0 if exception else 1},{status}\n")
    FILES.flush()


@events.quitting.add_listener
def _on_quit(environment, **kw):
    FILES.flush(force=True)


def journal(rec: dict) -> None:
    FILES.open()
    FILES.journal.write(json.dumps(rec) + "\n")


def _check(resp, ok: tuple[int, ...]) -> None:
    """A designed answer (404 not a member, 429 backpressure) is a success; 5xx and transport errors are not."""
    if resp.status_code in ok:
        resp.success()
    else:
        resp.failure(f"HTTP {resp.status_code}")


class Reader(FastHttpUser):
    """Membership checks and unread reads, zipf over rooms and users."""

    fixed_count = int(CFG.get("readers", 1))
    wait_time = constant_throughput(float(CFG.get("reader_rps", 10)))
    network_timeout = 5.0
    connection_timeout = 2.0

    def on_start(self) -> None:
        self.rng = random.Random()

    @task(7)
    def membership(self) -> None:
        tenant = self.rng.choice(U.tenants)
        room = U.room(zipf_index(self.rng, U.rooms))
        user = U.user(zipf_index(self.rng, U.users))
        with self.client.get(f"/v1/{tenant}/rooms/{room}/members/{user}", headers=AUTH, name="membership",
                             catch_response=True) as resp:
            _check(resp, (200, 404, 429))

    @task(3)
    def unread(self) -> None:
        tenant = self.rng.choice(U.tenants)
        user = U.user(zipf_index(self.rng, U.users))
        with self.client.get(f"/v1/{tenant}/users/{user}/unread", headers=AUTH, name="unread",
                             catch_response=True) as resp:
            _check(resp, (200, 429))


class Indexer(FastHttpUser):
    """Index requests of 1 to 5 events: new messages, edits (a higher version) and deletes of its own messages."""

    fixed_count = int(CFG.get("indexers", 1))
    wait_time = constant_throughput(float(CFG.get("indexer_rps", 2)))
    network_timeout = 5.0
    connection_timeout = 2.0

    def on_start(self) -> None:
        self.rng = random.Random()
        self.prefix = f"m{os.getpid()}x{random.getrandbits(24):06x}"
        self.n = 0
        self.versions: dict[tuple[str, str], int] = {}  # (tenant, message) → last version sent

    def _event(self, tenant: str) -> dict:
        known = [k for k in self.versions if k[0] == tenant]
        r = self.rng.random()
        if known and r < 0.3:
            key = self.rng.choice(known[-50:])
            version = self.versions[key] + 1
            self.versions[key] = version
            if r < 0.08:
                return {"op": "delete", "message_id": key[1], "version": version}
            mid = key[1]
        else:
            self.n += 1
            mid = f"{self.prefix}-{self.n}"
            version = 1
            self.versions[(tenant, mid)] = version
        text = " ".join(self.rng.choices(WORDS, k=self.rng.randint(3, 10))) + f" v{version}"
        return {"op": "upsert", "room_id": U.room(zipf_index(self.rng, U.rooms)), "message_id": mid,
                "version": version, "text": text, "sender": U.user(self.rng.randrange(U.users)),
                "created_at": "2026-11-27T12:00:00Z"}

    @task
    def index(self) -> None:
        tenant = self.rng.choice(U.tenants)
        evs = [self._event(tenant) for _ in range(self.rng.randint(1, 5))]
        body = {"events": evs}
        with self.client.post(f"/v1/{tenant}/index", json=body, headers=AUTH, name="index",
                              catch_response=True) as resp:
            _check(resp, (202, 429))
            status = resp.status_code
        outcome = "accepted" if status == 202 else ("rejected" if 400 <= status < 500 else "maybe")
        for e in evs:
            journal({"k": "index", "tenant": tenant, "id": e["message_id"], "op": e["op"], "version": e["version"],
                     "status": outcome, "t": time.time()})


class Uploader(FastHttpUser):
    """An image put in the uploads bucket (moto), then MinIO's webhook event POSTed to /v1/storage-events."""

    fixed_count = int(CFG.get("uploaders", 1))
    wait_time = constant_throughput(float(CFG.get("uploader_rps", 1)))
    network_timeout = 5.0
    connection_timeout = 2.0

    def on_start(self) -> None:
        self.rng = random.Random()
        self.s3 = FastHttpSession(CFG["s3"], self.environment.events.request, self, network_timeout=3.0,
                                  connection_timeout=2.0)
        self.images = [(p.name, p.read_bytes()) for p in sorted(Path(CFG["images"]).iterdir())]
        self.n = 0

    @task
    def upload(self) -> None:
        name, data = self.rng.choice(self.images)
        self.n += 1
        key = f"lt/{os.getpid()}-{id(self) % 100000}-{self.n}-{name}"
        with self.s3.request("PUT", f"/{CFG['bucket']}/{key}", data=data, name="s3 put", catch_response=True) as r:
            _check(r, (200,))
            etag = (r.headers.get("ETag") or "").strip('"') if r.status_code == 200 else ""
        if not etag:
            return
        record = {"eventVersion": "2.0", "eventSource": "minio:s3", "eventName": "s3:ObjectCreated:Put",
                  "s3": {"bucket": {"name": CFG["bucket"]},
                         "object": {"key": key.replace("/", "%2F"), "size": len(data), "eTag": etag}}}
        body = {"EventName": "s3:ObjectCreated:Put", "Key": f"{CFG['bucket']}/{key}", "Records": [record]}
        with self.client.post("/v1/storage-events", json=body, name="storage-event", catch_response=True,
                              headers={"Authorization": f"Bearer {CFG['webhook_token']}"}) as resp:
            _check(resp, (202, 429))
            status = resp.status_code
        outcome = "accepted" if status == 202 else ("rejected" if 400 <= status < 500 else "maybe")
        journal({"k": "upload", "key": key, "etag": etag, "bad": name.startswith("bad"), "status": outcome,
                 "t": time.time()})


class Shape(LoadTestShape):
    """Every user at once (the rate is fixed per user), held for the stated time, then stop."""

    def tick(self):
        if self.get_run_time() >= float(CFG.get("duration_s", 30)):
            return None
        total = Reader.fixed_count + Indexer.fixed_count + Uploader.fixed_count
        return total, total
