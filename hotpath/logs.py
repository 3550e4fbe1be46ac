"""JSON-lines logging for every hotpath process (one object per line on stderr), and its batched fast path.

Why a batched handler: a per-request access line through a LogRecord, a formatter and a flush per line cost a
third of a cache hit. `JsonLinesHandler.emit_fields` builds the same line from a cached template and appends it to
a buffer written in chunks of at most PIPE_BUF bytes cut at line ends (so lines of several processes sharing
stderr never interleave), flushed by size, after `flush_interval_s`, before any ordinary record, and at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import sys
import threading
import time

import orjson

_STD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName", "color_message"}
CHUNK_BYTES = select.PIPE_BUF  # a write of at most this many bytes to a pipe is atomic
# Set by hotpath/tracing.py when tracing is on: gives {"trace_id", "span_id"} of the current span, or None. While
# tracing is off it stays None, so a line pays one global read for it.
trace_fields = None


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process
        self._second = -1
        self._second_text = ""
        self._heads: dict[tuple[str, str, str], bytes] = {}
        self._ms = -1
        self._ts = b""

    def timestamp(self, created: float) -> str:
        """`2026-12-01T22:43:42.401Z` (UTC, milliseconds); the text up to the second is computed once per second."""
        sec = int(created)
        if sec != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            self._second = sec
        return f"{self._second_text}.{int((created - sec) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": self.timestamp(record.created),
            "level": record.levelname,
            "proc": self.process,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if trace_fields is not None and (ids := trace_fields()):
            out.update(ids)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()

    def line(self, logger: str, level: str, msg: str, fields: dict, created: float) -> bytes:
        """The line `format` gives a record of `logger` at `level` with message `msg` and extra `fields`, built
        from cached parts (the timestamp per millisecond; level, proc, logger and msg once) and one orjson call."""
        key = (logger, level, msg)
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = b"," + orjson.dumps({"level": level, "proc": self.process, "logger": logger,
                                                           "msg": msg})[1:-1]
        if trace_fields is not None and (ids := trace_fields()):
            fields = {**fields, **ids}
        ms = int(created * 1000)
        if ms != self._ms:
            self._ms = ms
            self._ts = b'{"ts":' + orjson.dumps(self.timestamp(created))
        if not fields:
            return self._ts + head + b"}\n"
        return b"".join((self._ts, head, b",", orjson.dumps(fields, default=str)[1:], b"\n"))


class JsonLinesHandler(logging.Handler):
    """JSON lines on a stream. Ordinary records are written at once (after whatever is buffered, so the order is
    kept); `emit_fields` lines are buffered. Safe from any thread; outside an event loop it writes at once."""

    def __init__(self, process: str, stream=None, *, flush_interval_s: float = 0.05, chunk_bytes: int = CHUNK_BYTES) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter(process))
        self.stream = stream if stream is not None else sys.stderr
        self.flush_interval_s = flush_interval_s
        self.chunk_bytes = chunk_bytes
        self._buf: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._buf_lock = threading.Lock()

    def emit_fields(self, logger: str, msg: str, fields: dict, level: str = "INFO") -> None:
        """One buffered line, identical to what `emit` writes for that record; no LogRecord is made."""
        line = self.formatter.line(logger, level, msg, fields, time.time())
        loop = asyncio._get_running_loop()
        with self._buf_lock:
            if self._size + len(line) > self.chunk_bytes:
                self._write(self._take())
            self._buf.append(line)
            self._size += len(line)
            if loop is None:  # no loop to flush later (a thread, a script): write now
                self._write(self._take())
            elif self._timer is None or self._timer_loop is not loop:  # (a timer of a closed loop never fires)
                self._timer = loop.call_later(self.flush_interval_s, self.flush)
                self._timer_loop = loop

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode()
            with self._buf_lock:
                self._buf.append(line)
                self._size += len(line)
                self._write(self._take())
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Write everything buffered (also called by logging.shutdown at exit, and by the API's shutdown)."""
        with self._buf_lock:
            self._write(self._take())

    def close(self) -> None:
        self.flush()
        super().close()

    def _take(self) -> list[bytes]:
        buf, self._buf, self._size = self._buf, [], 0
        if self._timer is not None:
            if asyncio._get_running_loop() is self._timer_loop:  # a loop's timers are its own thread's business
                self._timer.cancel()
            self._timer = self._timer_loop = None
        return buf

    def _write(self, lines: list[bytes]) -> None:
        """Whole lines, in chunks of at most `chunk_bytes` (a longer line alone); waits while a pipe is full."""
        if not lines:
            return
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > self.chunk_bytes:
                self._write_chunk(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        self._write_chunk(b"".join(chunk))

    def _write_chunk(self, data: bytes) -> None:
        stream = self.stream
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # a StringIO, a test's capture
            stream.write(data.decode())
            stream.flush()
            return
        stream.flush()  # anything written to the stream object directly goes first
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:  # uvloop leaves stdio non-blocking: wait for the reader, never drop a line
                select.select([], [fd], [], 1.0)
                continue
            view = view[n:]


def setup_logging(process: str, level: str = "INFO") -> None:
    """Route the root logger (and uvicorn's/arq's) to JSON lines on stderr."""
    handler = JsonLinesHandler(process, sys.stderr)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "arq", "arq.worker", "arq.jobs"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # uvicorn's access log duplicates our per-request line, which carries the request id.
    logging.getLogger("uvicorn.access").disabled = True
