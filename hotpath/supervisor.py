"""Supervise `hotpath dev`'s children as one group: start, restart with backoff, stop in order, leave no orphan.

Supervision rule: an infrastructure process (Valkey, S3, Milvus) that dies stops the whole group with
a message naming it (the others cannot work without it); an application process (api, workers) that
dies is reported and restarted with exponential backoff (1 s doubling to 30 s), and after 5 deaths
within 60 s the group stops, since a crash loop hides the error. Children get their own process group
(Ctrl-C reaches only the supervisor, which stops them in order) and PR_SET_PDEATHSIG, so even a
SIGKILLed supervisor leaves no orphan behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

STOP_GRACE_S = 8.0
RESTART_MAX_DEATHS = 5
RESTART_WINDOW_S = 60.0


def _pdeathsig() -> None:
    """In the child: own process group, and SIGTERM when the supervisor dies."""
    os.setpgid(0, 0)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Child:
    """One supervised process; `infra` ones stop the group when they die, the others are restarted."""

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
    """The group of children: `poll()` once in a while, `stop_all()` at the end."""

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
                    say(f"{c.name} did not stop within {STOP_GRACE_S / 2:.0f}s; killing it")
                    with contextlib.suppress(OSError):  # already gone, or not ours
                        os.killpg(c.proc.pid, signal.SIGKILL)
                    c.proc.kill()
                    c.proc.wait(2)
                # anything the child itself started in its process group goes too
                with contextlib.suppress(OSError):  # already gone, or not ours
                    os.killpg(c.proc.pid, signal.SIGKILL)

    def poll(self) -> str | None:
        """Check children once; restart dead apps; returns a reason to stop the group, or None."""
        now = time.monotonic()
        for c in self.children:
            if c.proc is None:
                if now >= c.restart_at:
                    say(f"restarting {c.name}")
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
            say(f"{c.name} exited with code {rc}; restarting in {delay:.0f}s")
            c.proc = None
            c.restart_at = now + delay
        return None


def say(msg: str) -> None:
    print(f"hotpath dev: {msg}", file=sys.stderr, flush=True)
