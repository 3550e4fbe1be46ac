"""Decoder processes: each source is decoded in a long-lived child (`python -m thumb_worker.decoder`) that the
worker kills when the job's time limit passes; `DecoderPool` is the worker's side of them.

Why a subprocess and not libvips's kill flag: measured with libvips 8.18, the flag (set from an `eval`
callback) stops only work done *during* the output pipeline's evaluation; interlaced PNG, progressive JPEG,
WebP, GIF and AVIF decode the whole image before the first eval tick, and an EXIF-rotated source is decoded
inside the `thumbnail` call itself, so a hostile source could hold a thread and a core far past the limit.
SIGKILL of the child stops everything at once, frees its memory, and turns a decoder crash (a segfault on a
hostile file) into one dead-lettered job instead of a dead worker. Cost: one ~50-byte request and the
encoded thumbnails over a pipe per job; a child is spawned once and replaced only after a kill or crash.
Protocol: length-prefixed frames on stdin/stdout, a JSON head then one raw frame per thumbnail (no pickle:
the child parses hostile data, the parent trusts nothing it sends but its own JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, BinaryIO

from taskkit.errors import TransientError
from thumb_worker.guards import Header, Rejected
from thumb_worker.spec import Thumb, ThumbResult, ThumbSpec

log = logging.getLogger("thumb_worker.decoder")
_LEN = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024
SPAWN_TIMEOUT_S = 30.0
DEFAULT_RECYCLE_AFTER = 1000


# --- child side ---------------------------------------------------------------------------------------
def _write(out: BinaryIO, payload: bytes) -> None:
    out.write(_LEN.pack(len(payload)) + payload)


def _read(inp: BinaryIO) -> bytes | None:
    head = inp.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    (n,) = _LEN.unpack(head)
    data = inp.read(n)
    return data if len(data) == n else None


def child_main() -> None:
    """The decoder process: configure libvips, then answer one request per source until stdin closes."""
    # Our protocol owns the original stdout; anything else written to fd 1 (a C library's message) goes to stderr.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the worker, which drains first
    inp = sys.stdin.buffer
    from thumb_worker.thumbs import configure_vips, make_thumbnails

    first = _read(inp)
    if first is None:
        return
    cfg = json.loads(first)
    try:
        info = configure_vips(cache_max_mem=int(cfg.get("cache_max_mem", 0)))
        spec = ThumbSpec(**{**cfg["spec"], "sizes": tuple(cfg["spec"]["sizes"])})
    except Exception as exc:  # reported to the parent, which fails its start-up with it
        _write(out, json.dumps({"ready": False, "error": f"{type(exc).__name__}: {exc}"}).encode())
        return
    _write(out, json.dumps({"ready": True, "pid": os.getpid(), **info}).encode())
    while (req := _read(inp)) is not None:
        path = json.loads(req)["path"]
        try:
            r = make_thumbnails(path, spec)
        except Rejected as exc:
            _write(out, json.dumps({"ok": False, "label": exc.label, "message": str(exc)}).encode())
            continue
        except Exception as exc:  # a bug, not the source's fault: the parent retries the job
            _write(out, json.dumps({"ok": False, "label": None, "message": f"{type(exc).__name__}: {exc}"}).encode())
            continue
        head = {"ok": True, "header": asdict(r.header), "seconds": r.seconds, "timings": r.timings,
                "thumbs": [{"size": t.size, "width": t.width, "height": t.height} for t in r.thumbs]}
        _write(out, json.dumps(head).encode())
        for t in r.thumbs:
            _write(out, t.data)


# --- parent side --------------------------------------------------------------------------------------
class _Child:
    """One decoder process. Spawned with subprocess.Popen and reaped by its own `wait()`, not by asyncio's
    child watcher: after a killed child, that watcher reported later children's exit as 255 (status lost),
    and the exit status is what tells a crash (SIGSEGV: dead-letter) from a stop (SIGTERM: retry)."""

    def __init__(self, proc: subprocess.Popen, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proc = proc
        self.reader = reader
        self.writer = writer
        self.info: dict[str, Any] = {}
        self.jobs = 0

    @classmethod
    async def spawn(cls, env: dict[str, str] | None) -> _Child:
        proc = await asyncio.to_thread(
            subprocess.Popen, [sys.executable, "-m", "thumb_worker.decoder"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=env, start_new_session=True, bufsize=0)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_FRAME)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), proc.stdout)
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, proc.stdin)
        return cls(proc, reader, asyncio.StreamWriter(transport, protocol, reader, loop))

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    async def send(self, payload: bytes) -> None:
        self.writer.write(_LEN.pack(len(payload)) + payload)
        await self.writer.drain()

    async def recv(self) -> bytes:
        (n,) = _LEN.unpack(await self.reader.readexactly(_LEN.size))
        if n > MAX_FRAME:
            raise ConnectionError(f"decoder sent a {n}-byte frame")
        return await self.reader.readexactly(n)

    async def kill(self) -> int | None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.writer.close()
        return await asyncio.to_thread(self.proc.wait)

    async def close(self) -> None:
        self.writer.close()  # the child sees stdin close after its current source and exits
        try:
            await asyncio.to_thread(self.proc.wait, 5)
        except subprocess.TimeoutExpired:
            await self.kill()


class DecoderPool:
    """Up to `size` decoder processes, each running one source at a time under `time_limit_s`.

    `run(path)` returns the ThumbResult or raises Rejected (the source's fault, including the time limit
    and a decoder crash) or TransientError (the decoder could not be started). Children are spawned on
    demand, reused, and replaced after a kill, a crash or `recycle_after` jobs."""

    def __init__(self, spec: ThumbSpec, *, size: int, time_limit_s: float, cache_max_mem: int = 0,
                 recycle_after: int = DEFAULT_RECYCLE_AFTER, env: Mapping[str, str] | None = None) -> None:
        if size < 1 or time_limit_s <= 0:
            raise ValueError("size must be >= 1 and time_limit_s > 0")
        self.spec = spec
        self.size = size
        self.time_limit_s = time_limit_s
        self.recycle_after = recycle_after
        self._cfg = json.dumps({"spec": {**asdict(spec), "sizes": list(spec.sizes)},
                                "cache_max_mem": cache_max_mem}).encode()
        self._env = dict(env) if env is not None else None
        self._idle: list[_Child] = []
        self._all: set[_Child] = set()
        self._slots = asyncio.Semaphore(size)
        self.killed = 0

    @property
    def pids(self) -> list[int]:
        """Process ids of the live decoder processes (for tests and memory figures)."""
        return [c.pid for c in self._all if c.returncode is None]

    async def _spawn(self) -> _Child:
        child = await _Child.spawn(self._env)
        try:
            await child.send(self._cfg)
            child.info = json.loads(await asyncio.wait_for(child.recv(), SPAWN_TIMEOUT_S))
        except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError) as exc:
            await child.kill()
            raise TransientError(f"cannot start a thumbnail decoder process ({type(exc).__name__}: {exc})") from exc
        if not child.info.get("ready"):
            await child.kill()
            raise RuntimeError(f"thumbnail decoder refused its configuration: {child.info.get('error')}")
        self._all.add(child)
        return child

    async def start(self) -> dict[str, Any]:
        """Spawn one decoder (the start-up check: libvips loads and is configured); returns what it reported."""
        child = await self._spawn()
        self._idle.append(child)
        return child.info

    async def run(self, path: str) -> ThumbResult:
        """Thumbnails of the source file at `path`, made in a decoder process within the time limit."""
        async with self._slots:
            child = self._idle.pop() if self._idle else await self._spawn()
            healthy = False  # only a child that answered in full is reused: any other is mid-frame or dead
            start = time.monotonic()
            try:
                answer = await asyncio.wait_for(self._roundtrip(child, path), self.time_limit_s)
                healthy = True
            except TimeoutError:
                await child.kill()
                self.killed += 1
                raise Rejected("time_limit", f"making the thumbnails took longer than {self.time_limit_s:g} s "
                                             "(HOTPATH_THUMB_TIME_LIMIT_S): the decoder was stopped") from None
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                rc = await child.kill()
                raise self._crashed(rc, time.monotonic() - start) from exc
            finally:
                if healthy and child.jobs < self.recycle_after:
                    self._idle.append(child)
                else:
                    self._all.discard(child)
                    if child.returncode is None:
                        await (child.close() if healthy else child.kill())
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def _roundtrip(self, child: _Child, path: str) -> ThumbResult | Exception:
        child.jobs += 1
        await child.send(json.dumps({"path": path}).encode())
        head = json.loads(await child.recv())
        if not head["ok"]:
            if head["label"] is None:
                return RuntimeError(f"thumbnail decoder failed: {head['message']}")
            return Rejected(head["label"], head["message"])
        thumbs = []
        for t in head["thumbs"]:
            thumbs.append(Thumb(size=t["size"], width=t["width"], height=t["height"], data=await child.recv()))
        return ThumbResult(header=Header(**head["header"]), thumbs=tuple(thumbs), seconds=head["seconds"],
                           timings=head["timings"])

    def _crashed(self, rc: int | None, elapsed: float) -> Exception:
        if rc is not None and rc < 0 and -rc in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            # stopped from outside (a shutdown), not by the source: run the job again
            return TransientError(f"the decoder process was stopped by {signal.Signals(-rc).name}")
        how = f"signal {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"exit code {rc}"
        hint = " (out of memory?)" if rc == -signal.SIGKILL else ""
        return Rejected("decoder_crashed", f"the decoder process died ({how}{hint}) after {elapsed:.1f} s on this "
                                           "source: the file is likely hostile or corrupt")

    async def close(self) -> None:
        """Stop every decoder process (each finishes its current source, then sees stdin close)."""
        children, self._idle, self._all = list(self._all), [], set()
        await asyncio.gather(*(c.close() for c in children), return_exceptions=True)


if __name__ == "__main__":
    child_main()
