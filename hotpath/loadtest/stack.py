"""The load test's stack: every part `hotpath dev` runs, started from its SERVICES, but held by the runner.

Why not `hotpath dev` itself: dev stops the whole group when an infrastructure process dies and restarts a
killed worker after a second, which is exactly what a fault test must control. So the runner starts each part
with dev's own descriptions (hotpath/dev.py `SERVICES`, hotpath/supervisor.py `Child`) and never polls the
supervisor: a part is down until the runner starts it again, on the same port and data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hotpath.dev import SERVICES, Stack, _bin, _ensure_buckets, _wait_port, free_port
from hotpath.supervisor import Child, Supervisor

QUEUES = ("index", "thumb")
TASKKIT_PREFIX = "lt:tk:"
JWT_KID = "loadtest"


class StackError(Exception):
    """The stack could not start; the message is one line."""


def _valkey_with_fsync_always(server):
    """Dev's Valkey (AOF on) with `appendfsync always`: every acknowledged write is on disk before the reply, so
    a SIGKILLed queue Redis loses no accepted job — the setting the README names for the queue Redis."""
    base = server.argv
    return dataclasses.replace(server, argv=lambda st, port: [*base(st, port), "--appendfsync", "always"])


async def _pg_schema(pg_url: str, schema: str, universe) -> None:
    """Create the origin's schema in its own PostgreSQL schema and fill it with the load test's universe."""
    from cacheman.origin.sql import init_schema
    from hotpath.loadtest.universe import fill_origin

    await init_schema(pg_url, demo=False, schema=schema)
    await fill_origin(pg_url, schema, universe)


async def drop_pg_schema(pg_url: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"), timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


class LoadStack:
    """The running parts, by name: valkey, s3, milvus, origin-a, origin-b, api, worker-index, worker-thumb."""

    def __init__(self, data_dir: Path, pg_url: str, universe, *, app_env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.logs = data_dir / "logs"
        self.pg_url = pg_url
        self.schema = f"loadtest_{secrets.token_hex(4)}"
        self.universe = universe
        self.extra_env = app_env or {}
        self.sup = Supervisor()
        self.children: dict[str, Child] = {}
        self.urls: dict[str, str] = {}
        self.jwt_secret = secrets.token_urlsafe(32)
        self.webhook_token = secrets.token_urlsafe(24)
        self.api_url = ""
        self.ports: dict[str, int] = {}
        self._schema_made = False

    # --- start ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        from hotpath.settings import DevSettings

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        for k in list(env):  # the runner's own HOTPATH_* must not leak into the children
            if k.startswith("HOTPATH_"):
                del env[k]
        settings = DevSettings(_env_file=None, data_dir=str(self.data_dir))
        stack = Stack(settings, self.data_dir, self.logs, self.sup, env)
        for service in SERVICES:
            if service.name == "origin":
                continue
            server = service.start
            if service.name == "redis":
                server = _valkey_with_fsync_always(server)
            url, _ = server(stack)
            if service.name == "s3":
                _ensure_buckets(stack, url)
            self.urls[service.name] = url
            self.children[server.name] = self.sup.children[-1]
        self.s3_keys = (settings.s3_access_key, settings.s3_secret_key)
        asyncio.run(_pg_schema(self.pg_url, self.schema, self.universe))
        self._schema_made = True
        origin_sql = f"{self.pg_url}?schema={self.schema}"
        origins = []
        for name in ("origin-a", "origin-b"):
            port = free_port()
            child = self._add(Child(name, [sys.executable, "-m", "cacheman.origin.double", "--origin-url", origin_sql,
                                           "--port", str(port), "--name", name], env, self.logs / f"{name}.log",
                                    infra=True))
            _wait_port(port, child.proc, name, 30, child.log)
            origins.append(f"http://127.0.0.1:{port}")
        self.urls["origin"] = ",".join(origins)
        self.urls["origin_sql"] = origin_sql

        api_port = free_port()
        self.api_url = f"http://127.0.0.1:{api_port}"
        self.app_env = dict(
            env,
            HOTPATH_REDIS_URL=self.urls["redis"], HOTPATH_S3_ENDPOINT=self.urls["s3"],
            HOTPATH_MILVUS_URI=self.urls["milvus"], HOTPATH_ORIGIN_URL=self.urls["origin"],
            HOTPATH_HOST="127.0.0.1", HOTPATH_PORT=str(api_port), HOTPATH_DATA_DIR=str(self.data_dir),
            HOTPATH_JWT_KEYS=f'{{"{JWT_KID}": "{self.jwt_secret}"}}', HOTPATH_TASKKIT_PREFIX=TASKKIT_PREFIX,
            HOTPATH_STORAGE_WEBHOOK_TOKEN=self.webhook_token, HOTPATH_LOG_LEVEL="WARNING",
            HOTPATH_INDEX_METRICS_PORT=str(free_port()), HOTPATH_THUMB_METRICS_PORT=str(free_port()),
            MALLOC_ARENA_MAX="2",
        )
        self.app_env.update(self.extra_env)
        hp = _bin("hotpath")
        self._add(Child("api", [hp, "api"], self.app_env, self.logs / "api.log", infra=False))
        self._add(Child("worker-index", [hp, "worker", "index"], self.app_env, self.logs / "worker-index.log",
                        infra=False))
        self._add(Child("worker-thumb", [hp, "worker", "thumb"], self.app_env, self.logs / "worker-thumb.log",
                        infra=False))
        self.wait_ready(120)

    def _add(self, child: Child) -> Child:
        self.sup.add(child)
        self.children[child.name] = child
        return child

    def wait_ready(self, timeout: float) -> None:
        """The API's /readyz answers 200 and both workers are up (their health records are in Redis)."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, child in self.children.items():
                if child.proc is not None and child.proc.poll() is not None:
                    raise StackError(f"{name} exited with code {child.proc.returncode} while starting; see "
                                     f"{child.log}: {_tail(child.log)}")
            with contextlib.suppress(httpx.HTTPError):
                # each worker serves /metrics once its start-up (buckets, collection, decoders) is done
                if (httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200
                        and all(httpx.get(f"http://127.0.0.1:{self.app_env[v]}/metrics", timeout=2).status_code == 200
                                for v in ("HOTPATH_INDEX_METRICS_PORT", "HOTPATH_THUMB_METRICS_PORT"))):
                    return
            time.sleep(0.5)
        raise StackError(f"the stack was not ready within {timeout:.0f}s (logs in {self.logs})")

    # --- faults --------------------------------------------------------------------------------------------
    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        child = self.children[name]
        if child.proc is not None and child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, sig)  # the process group: a worker's decoder children go too
            child.proc.wait(15)

    def stop(self, name: str) -> None:
        """SIGTERM, and SIGKILL after 10 s."""
        child = self.children[name]
        if child.proc is not None and child.proc.poll() is None:
            child.proc.terminate()
            try:
                child.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill(name)

    def hang(self, name: str) -> None:
        os.kill(self.children[name].proc.pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        os.kill(self.children[name].proc.pid, signal.SIGCONT)

    def start_again(self, name: str) -> None:
        """Start a stopped or killed part again: same command line, so the same port and data directory."""
        child = self.children[name]
        if child.proc is not None and child.proc.poll() is None:
            return
        child.start()

    def alive(self, name: str) -> bool:
        child = self.children[name]
        return child.proc is not None and child.proc.poll() is None

    # --- end -----------------------------------------------------------------------------------------------
    def close(self) -> None:
        for name in self.children:  # a hung part cannot take SIGTERM
            with contextlib.suppress(ProcessLookupError, AttributeError):
                self.resume(name)
        self.sup.stop_all()
        if self._schema_made:
            with contextlib.suppress(Exception):
                asyncio.run(drop_pg_schema(self.pg_url, self.schema))

    def token(self, scope: str = "cache:read cache:write index:write ops") -> str:
        from cacheman.auth import mint_token

        return mint_token(self.jwt_secret, kid=JWT_KID, sub="loadtest", tenants=["*"], scope=scope, ttl_s=86400)

    def describe(self) -> dict[str, Any]:
        return {"api": self.api_url, **{k: v for k, v in self.urls.items() if k != "origin_sql"},
                "pg_schema": self.schema, "logs": str(self.logs)}


def _tail(log: Path | None, n: int = 600) -> str:
    if not log or not log.exists():
        return ""
    return log.read_bytes()[-n:].decode(errors="replace").strip().replace("\n", " | ")
