"""The faults `hotpath loadtest` injects on its schedule, and the sampler of queue depths and readiness.

A fault has a window: from the moment it is injected until the part is back (restarted or resumed); the SLOs
measure availability inside each window and the time from its end to full recovery. Both run in threads of the
runner, which holds the processes; the load runs in other processes, so a hung part never hangs the clock.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

from hotpath.loadtest.stack import QUEUES, TASKKIT_PREFIX, LoadStack

# kind → (part, how it is broken, how it comes back)
KINDS = {
    "kill_index_worker": ("worker-index", "SIGKILL", "start"),
    "kill_thumb_worker": ("worker-thumb", "SIGKILL", "start"),
    "restart_redis": ("valkey", "SIGKILL", "start"),
    "kill_origin": ("origin-a", "SIGKILL", "start"),
    "restart_milvus": ("milvus", "SIGTERM", "start"),
    "hang_s3": ("s3", "SIGSTOP", "SIGCONT"),
}


@dataclass
class Fault:
    kind: str
    at_s: float  # after the load starts
    hold_s: float  # how long the part stays broken
    start: float | None = None  # wall-clock window, set when injected
    end: float | None = None
    error: str = ""

    @property
    def part(self) -> str:
        return KINDS[self.kind][0]

    def as_dict(self) -> dict:
        part, how, back = KINDS[self.kind]
        return {"kind": self.kind, "part": part, "how": how, "back": back, "at_s": self.at_s, "hold_s": self.hold_s,
                "start": self.start, "end": self.end, "error": self.error}


def parse_faults(specs: list[dict]) -> list[Fault]:
    faults = []
    for s in specs:
        if s["kind"] not in KINDS:
            raise ValueError(f"unknown fault kind {s['kind']!r}; known: {', '.join(KINDS)}")
        faults.append(Fault(s["kind"], float(s["at_s"]), float(s["hold_s"])))
    faults.sort(key=lambda f: f.at_s)
    for a, b in itertools.pairwise(faults):
        if a.at_s + a.hold_s >= b.at_s:
            raise ValueError(f"faults {a.kind} and {b.kind} overlap: one at a time, so each window measures one")
    return faults


class FaultInjector:
    """Injects each fault at its time after `t0` and brings the part back after its hold; `step()` from the
    runner's main thread. Not a thread: a child's PR_SET_PDEATHSIG fires when the *thread* that started it ends,
    so a part restarted from a short-lived thread would get SIGTERM when that thread finished."""

    def __init__(self, stack: LoadStack, faults: list[Fault], t0: float) -> None:
        self.stack, self.faults, self.t0 = stack, faults, t0

    def step(self) -> None:
        now = time.time()
        for f in self.faults:
            part, how, _ = KINDS[f.kind]
            if f.start is None and now >= self.t0 + f.at_s:
                f.start = time.time()
                try:
                    if how == "SIGSTOP":
                        self.stack.hang(part)
                    elif how == "SIGTERM":
                        self.stack.stop(part)
                    else:
                        self.stack.kill(part)
                except Exception as exc:  # reported in report.json; the run goes on
                    f.error = f"inject: {type(exc).__name__}: {exc}"
            elif f.start is not None and f.end is None and now >= f.start + f.hold_s:
                self.restore(f)

    def restore(self, f: Fault) -> None:
        part, _how, back = KINDS[f.kind]
        try:
            if back == "SIGCONT":
                self.stack.resume(part)
            else:
                self.stack.start_again(part)
        except Exception as exc:
            f.error += f" restore: {type(exc).__name__}: {exc}"
        f.end = time.time()

    def finish(self) -> None:
        """A fault cut short by the end of the load: every part must be back for the checks."""
        for f in self.faults:
            if f.start is not None and f.end is None:
                self.restore(f)


@dataclass
class Sample:
    t: float
    depth: dict[str, int | None] = field(default_factory=dict)  # ready + running jobs per queue (None: no answer)
    retry: dict[str, int | None] = field(default_factory=dict)
    dead: dict[str, int | None] = field(default_factory=dict)
    ready: bool = False


class Sampler(threading.Thread):
    """Every `every_s`: each queue's depth, retry and dead-letter sizes (Redis), and the API's /readyz."""

    def __init__(self, stack: LoadStack, every_s: float = 0.5) -> None:
        super().__init__(name="sampler", daemon=True)
        self.stack, self.every_s = stack, every_s
        self.samples: list[Sample] = []
        self.halt = threading.Event()

    def run(self) -> None:
        import httpx
        import redis

        from taskkit.keys import Keys

        keys = Keys(TASKKIT_PREFIX)
        r = redis.Redis.from_url(self.stack.urls["redis"], socket_timeout=0.5, socket_connect_timeout=0.5)
        with httpx.Client(timeout=1.0) as http:
            while not self.halt.wait(self.every_s):
                s = Sample(time.time())
                for q in QUEUES:
                    try:
                        s.depth[q] = r.zcard(keys.arq_queue(q))
                        s.retry[q] = r.zcard(keys.retry_index(q))
                        s.dead[q] = r.zcard(keys.dlq_index(q))
                    except redis.RedisError:
                        s.depth[q] = s.retry[q] = s.dead[q] = None
                try:
                    s.ready = http.get(f"{self.stack.api_url}/readyz").status_code == 200
                except httpx.HTTPError:
                    s.ready = False
                self.samples.append(s)
        r.close()


def recovery_s(fault: Fault, samples: list[Sample], watermarks: dict[str, int]) -> float | None:
    """Seconds from the fault's end to the first sample with the API ready and every queue under its watermark."""
    if fault.end is None:
        return None
    for s in samples:
        if s.t < fault.end:
            continue
        if s.ready and all(s.depth.get(q) is not None and s.depth[q] <= wm for q, wm in watermarks.items()):
            return max(0.0, s.t - fault.end)
    return None
