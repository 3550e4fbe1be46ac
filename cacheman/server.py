"""Run the API under uvicorn with graceful shutdown (uvicorn drains in-flight requests on SIGTERM): one process, or
N processes on one port (`workers`, uvicorn's supervisor; each process builds its app from an import string).

Why Prometheus multiprocess mode for N processes: a scrape reaches whichever process accepts it, so per-process
scraping cannot work behind one port. PROMETHEUS_MULTIPROC_DIR is set here, before uvicorn spawns the processes
(each imports prometheus_client afresh and writes its series to files there), and /metrics merges the files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import uvicorn
from uvicorn.supervisors import Multiprocess

from cacheman.app import create_app

FLAGS = {
    "log_config": None,
    "access_log": False,
    "timeout_graceful_shutdown": 8,
    "loop": "uvloop",
    "http": "httptools",
    "lifespan": "on",
}
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def serve(settings, app=None, *, factory: str | None = None, workers: int = 1) -> None:
    """Serve `app` (default: create_app(settings); `hotpath api` passes the composed one, hotpath/api.py), or with
    `workers` > 1 that many processes each serving `factory()` ("module:function", read in the process)."""
    if workers > 1:
        if factory is None:
            raise ValueError("several API processes need a factory import string (\"module:function\")")
        _serve_many(settings, factory, workers)
        return
    config = uvicorn.Config(app if app is not None else create_app(settings), host=settings.host,
                            port=settings.port, **FLAGS)
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise OSError(98, "address already in use or startup failed")


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, plus: a dead worker's live gauges leave /metrics (prometheus_client's
    mark_process_dead), and whether it stopped on a signal or because a worker could not start."""

    def __init__(self, config: uvicorn.Config, sockets: list, metrics_dir: str) -> None:
        super().__init__(config, sockets)
        self.metrics_dir = metrics_dir
        self.signalled = False

    def keep_subprocess_alive(self) -> None:
        from prometheus_client import multiprocess

        before = {p.pid for p in self.processes}
        super().keep_subprocess_alive()
        for pid in before - {p.pid for p in self.processes}:
            multiprocess.mark_process_dead(pid, self.metrics_dir)

    def handle_int(self) -> None:
        self.signalled = True
        super().handle_int()

    def handle_term(self) -> None:
        self.signalled = True
        super().handle_term()


def _metrics_dir() -> tuple[str, bool]:
    """PROMETHEUS_MULTIPROC_DIR (emptied of an earlier run's files), or a new temporary one: (path, made here)."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        path = tempfile.mkdtemp(prefix="hotpath-metrics-")
        os.environ[MULTIPROC_ENV] = path  # inherited by the spawned processes
        return path, True
    Path(path).mkdir(parents=True, exist_ok=True)
    for f in Path(path).glob("*.db"):  # a dead run's series would be merged into this one's
        f.unlink()
    return path, False


def _serve_many(settings, factory: str, workers: int) -> None:
    config = uvicorn.Config(factory, factory=True, workers=workers, host=settings.host, port=settings.port, **FLAGS)
    try:
        sock = config.bind_socket()
    except SystemExit:  # uvicorn logs the bind error and exits
        raise OSError(98, "address already in use") from None
    metrics_dir, made_here = _metrics_dir()
    try:
        supervisor = _Supervisor(config, [sock], metrics_dir)
        supervisor.run()
        if not supervisor.signalled:
            raise RuntimeError("an API process failed to start (its log lines are above); every process stopped")
    finally:
        sock.close()
        if made_here:
            shutil.rmtree(metrics_dir, ignore_errors=True)
