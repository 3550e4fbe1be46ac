"""The Milvus adapter of the index worker: one collection of chat messages, tenants apart by partition key.

Why the sync MilvusClient in threads: AsyncMilvusClient.create_collection with index params raises a raw gRPC
UNIMPLEMENTED on Milvus Lite (pymilvus #3711); the sync client works on Lite and on Milvus standalone alike.
Every call carries `timeout=` (a hung server blocks forever otherwise) and runs on the store's own threads.
After a failed call, or a silence longer than a restart takes, the next call waits for a lone probe
(describe_collection): Milvus Lite loses writes to a collection opened by concurrent first requests (reopen.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from index_worker import metrics
from index_worker.embed import vector_problem
from index_worker.milvus_errors import Kind, MilvusPermanent, MilvusTransient, classify, to_task_error
from index_worker.reopen import ReopenGate

ID_MAX_BYTES = 128  # tenant, room, message and sender ids
PK_MAX_BYTES = 2 * ID_MAX_BYTES + 1
MODEL_MAX_BYTES = 256
MILVUS_MESSAGE_LIMIT = 64 * 1024 * 1024  # Milvus's default gRPC message limit
_tracer = trace.get_tracer("index_worker")
FIELDS = ("pk", "tenant_id", "room_id", "message_id", "sender", "text", "created_at", "version", "model")
INT64_MAX = 2**63 - 1


def _traced(call: Any, method: str, collection: str) -> Any:
    """`call` for the store's threads: run in the caller's context (run_in_executor does not carry it), inside a
    Milvus client span, so the batch's or the request's span is its parent and pymilvus's gRPC span its child."""
    ctx = contextvars.copy_context()

    def run() -> Any:
        with _tracer.start_as_current_span(f"milvus {method}", kind=trace.SpanKind.CLIENT) as span:
            if span.is_recording():
                span.set_attributes({"db.system.name": "milvus", "db.operation.name": method,
                                     "db.collection.name": collection})
            return call()

    return functools.partial(ctx.run, run)


class _PymilvusToRoot(logging.Handler):
    """pymilvus logs through its own plain-text handler, every failed call at ERROR with a traceback in the message
    (and connection recovery with exc_info); we raise a classified error for each ourselves. So its records go to
    the process's own handlers (JSON lines) as one WARNING line each, without the traceback."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        record.msg = record.getMessage().split("\nTraceback:", 1)[0]
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.msg}: {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        record.exc_info = record.exc_text = record.stack_info = None
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        for handler in logging.getLogger().handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


def quiet_pymilvus_logs() -> None:
    """Route pymilvus's loggers through _PymilvusToRoot (idempotent); processes call it once at start."""
    import pymilvus  # noqa: F401  (its import configures its loggers; replace that configuration after it)

    top = logging.getLogger("pymilvus")
    if not any(isinstance(h, _PymilvusToRoot) for h in top.handlers):
        top.handlers[:] = [_PymilvusToRoot()]
        top.propagate = False
    for name in ("pymilvus.milvus_client", "pymilvus.bulk_writer"):  # configured apart by pymilvus: join the rest
        child = logging.getLogger(name)
        child.handlers[:] = []
        child.propagate = True


PK_SEPARATOR = "/"  # no tenant id may contain it (row_problem), so `{tenant}/{message}` is unambiguous


def message_pk(tenant_id: str, message_id: str) -> str:
    """The tenant-scoped primary key: two tenants may both have a message `m1`, neither overwrites the other.
    `/`, not `:`: ids may contain `:`, and tenant `a:b`'s message `c` must not be tenant `a`'s message `b:c`."""
    return f"{tenant_id}{PK_SEPARATOR}{message_id}"


def quote(value: str) -> str:
    """A string literal for a Milvus filter expression (C-style escapes, understood by Milvus and Milvus Lite)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + escaped.replace("\t", "\\t") + '"'


@dataclass(frozen=True)
class MessageRow:
    """One indexed message, as stored (created_at in epoch milliseconds)."""

    tenant_id: str
    room_id: str
    message_id: str
    sender: str
    text: str
    created_at: int
    version: int
    model: str
    vector: Sequence[float]

    @property
    def pk(self) -> str:
        return message_pk(self.tenant_id, self.message_id)

    def to_entity(self) -> dict[str, Any]:
        # by hand: dataclasses.asdict deep-copies each float of the vector (~0.4 ms a row at 384-d, bench/RESULTS.md)
        return {"tenant_id": self.tenant_id, "room_id": self.room_id, "message_id": self.message_id,
                "sender": self.sender, "text": self.text, "created_at": self.created_at, "version": self.version,
                "model": self.model, "vector": list(self.vector), "pk": self.pk}


@dataclass(frozen=True)
class Hit:
    """A search result: the message and its cosine similarity to the query."""

    score: float
    pk: str
    tenant_id: str
    room_id: str
    message_id: str
    sender: str
    text: str
    created_at: int
    version: int
    model: str


def _id_problem(field: str, value: object, max_bytes: int = ID_MAX_BYTES) -> str | None:
    if not isinstance(value, str) or not value:
        return f"{field} must be a non-empty string"
    if len(value.encode()) > max_bytes:
        return f"{field} is longer than {max_bytes} bytes"
    if any(ord(c) < 32 for c in value):
        return f"{field} must not contain control characters"
    return None


def row_problem(row: MessageRow, dim: int, text_max_bytes: int) -> str | None:
    """Why Milvus would refuse `row` (checked before calling it, so the reason is clear), or None."""
    for field in ("tenant_id", "room_id", "message_id", "sender"):
        problem = _id_problem(field, getattr(row, field))
        if problem:
            return problem
    if PK_SEPARATOR in row.tenant_id:
        return f"tenant_id must not contain {PK_SEPARATOR!r}"
    if not isinstance(row.text, str):
        return "text must be a string"
    size = len(row.text.encode())
    if size > text_max_bytes:
        return f"text is {size} bytes, the index stores at most {text_max_bytes} (HOTPATH_INDEX_TEXT_MAX_BYTES)"
    for field in ("created_at", "version"):
        value = getattr(row, field)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
            return f"{field} must be a non-negative 64-bit integer"
    problem = _id_problem("model", row.model, MODEL_MAX_BYTES)
    return problem or vector_problem(row.vector, dim)


def row_bytes(row: MessageRow, dim: int) -> int:
    """A generous estimate of a row's size on the wire (vector, strings, ints, framing)."""
    strings = (row.tenant_id, row.room_id, row.message_id, row.sender, row.text, row.model)
    return 4 * dim + sum(len(s.encode()) for s in strings) + len(row.pk.encode()) + 16 + 64


def chunk_rows(rows: Sequence[MessageRow], dim: int, *, max_bytes: int, max_rows: int) -> Iterator[list[MessageRow]]:
    """Split rows into requests of at most `max_rows` rows and `max_bytes` estimated bytes each."""
    chunk: list[MessageRow] = []
    size = 0
    for row in rows:
        b = row_bytes(row, dim)
        if chunk and (len(chunk) >= max_rows or size + b > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += b
    if chunk:
        yield chunk


def deleted_count(result: object) -> int:
    """The number of deleted rows from pymilvus's delete(): a dict {'delete_count': n} or a list of ids."""
    if isinstance(result, dict):
        return int(result.get("delete_count", 0))
    if isinstance(result, list | tuple):
        return len(result)
    return int(getattr(result, "delete_count", 0) or 0)


READ_ATTEMPTS = 4  # an idempotent read: the first try and three more after a lost connection
READ_PAUSE_S = 0.25  # pause before the n-th retry: n × this (0.25, 0.5, 0.75 s: gRPC reconnects within ~1 s)


class MilvusStore:
    """The messages collection: ensure, upsert, delete, delete a room, search, count, get."""

    def __init__(
        self,
        uri: str,
        *,
        collection: str = "hotpath_messages",
        dim: int = 384,
        token: str | None = None,
        timeout_s: float = 10.0,
        text_max_bytes: int = 8192,
        index_type: str = "AUTOINDEX",
        metric_type: str = "COSINE",
        max_batch_rows: int = 1000,
        max_batch_bytes: int = 16 * 1024 * 1024,
        threads: int = 4,
    ) -> None:
        if max_batch_bytes >= MILVUS_MESSAGE_LIMIT:
            raise ValueError("max_batch_bytes must stay under Milvus's 64 MiB message limit")
        self.uri = uri
        self.collection = collection
        self.dim = dim
        self.token = token
        self.timeout_s = timeout_s
        self.text_max_bytes = text_max_bytes
        self.index_type = index_type
        self.metric_type = metric_type
        self.max_batch_rows = max_batch_rows
        self.max_batch_bytes = max_batch_bytes
        self._executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="milvus")
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        self._gate = ReopenGate()

    # -- plumbing ---------------------------------------------------------------------------------------

    def _connect(self) -> Any:
        from pymilvus import MilvusClient

        return MilvusClient(uri=self.uri, token=self.token or "", timeout=self.timeout_s)

    async def _call(self, method: str, *args: Any, reload: bool = True, gate: bool = True, **kwargs: Any) -> Any:
        """Run a client call in the store's threads with `timeout=`; map failures to taskkit errors. On
        "collection not loaded" (a restarted server) load it and try once more. After a connection loss the
        call waits for the reopen gate (`gate=False`: the probe itself)."""
        loop = asyncio.get_running_loop()
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    try:
                        self._client = await self._wait(loop.run_in_executor(self._executor, self._connect))
                    except Exception as exc:
                        raise to_task_error(exc, f"connect to {self.uri}") from exc
                    self._gate.answered()
        if gate and self._gate.needed():
            await self._gate.wait(method, lambda: self._call("describe_collection", self.collection, reload=False,
                                                             gate=False))
        call = _traced(functools.partial(getattr(self._client, method), *args, timeout=self.timeout_s, **kwargs),
                       method, self.collection)
        started = time.perf_counter()
        try:
            return await self._wait(loop.run_in_executor(self._executor, call))
        except Exception as exc:
            verdict = classify(exc)
            metrics.MILVUS_ERRORS.labels("not_loaded" if verdict.not_loaded else verdict.kind.value, method).inc()
            if verdict.kind is Kind.TRANSIENT and not verdict.not_loaded:
                self._gate.lost()  # unavailable, timed out, cut: the server may be another process when it answers
            if verdict.not_loaded and reload:
                await self._call("load_collection", self.collection, reload=False)
                return await self._call(method, *args, reload=False, **kwargs)
            raise to_task_error(exc, method) from exc
        finally:
            self._gate.answered()
            metrics.MILVUS_SECONDS.labels(method).observe(time.perf_counter() - started)

    async def _read(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """An idempotent read, sent again (up to READ_ATTEMPTS in all) after a lost connection (code 2): Milvus
        Lite closes an idle channel with GOAWAY "too_many_pings", and the first calls after that or after a
        restart fail while gRPC reconnects. Writes are not resent here: their retry is the job's, via the guard."""
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                return await self._call(method, *args, **kwargs)
            except MilvusTransient as exc:
                lost = exc.code == 2 or getattr(exc.code, "name", None) == "UNAVAILABLE"  # Milvus's or gRPC's
                if not lost or attempt == READ_ATTEMPTS:
                    raise
                await asyncio.sleep(READ_PAUSE_S * attempt)
        raise AssertionError("unreachable")

    @property
    def max_call_s(self) -> float:
        """The longest one call may take: pymilvus retries UNAVAILABLE within its deadline; we never wait past
        twice that (belt and braces over the gRPC deadline)."""
        return self.timeout_s * 2 + 1

    async def _wait(self, future: asyncio.Future) -> Any:
        return await asyncio.wait_for(future, self.max_call_s)

    async def close(self) -> None:
        """Close the client and the store's threads."""
        if self._client is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._client.close)
            self._client = None
        self._executor.shutdown(wait=False)

    # -- schema -----------------------------------------------------------------------------------------

    def _schema(self) -> Any:
        from pymilvus import DataType, MilvusClient

        s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=PK_MAX_BYTES)
        s.add_field("tenant_id", DataType.VARCHAR, max_length=ID_MAX_BYTES, is_partition_key=True)
        for name in ("room_id", "message_id", "sender"):
            s.add_field(name, DataType.VARCHAR, max_length=ID_MAX_BYTES)
        s.add_field("text", DataType.VARCHAR, max_length=max(1, self.text_max_bytes))
        s.add_field("created_at", DataType.INT64)
        s.add_field("version", DataType.INT64)
        s.add_field("model", DataType.VARCHAR, max_length=MODEL_MAX_BYTES)
        s.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        return s

    def _index_params(self) -> Any:
        from pymilvus import MilvusClient

        params = MilvusClient.prepare_index_params()
        params.add_index("vector", index_type=self.index_type, metric_type=self.metric_type)
        return params

    async def ensure_collection(self) -> None:
        """Create the collection (schema, index) if missing, check an existing one matches, and load it.
        Idempotent; safe when several workers start at once."""
        if not await self._call("has_collection", self.collection):
            try:
                await self._call("create_collection", self.collection, schema=self._schema(),
                    index_params=self._index_params(), consistency_level="Strong",
                )
            except (MilvusPermanent, MilvusTransient):
                # Another worker may have created it between our check and our create (Lite answers code 1).
                if not await self._call("has_collection", self.collection):
                    raise
        await self._check_schema()
        if not await self._call("list_indexes", self.collection):
            await self._call("create_index", self.collection, self._index_params())
        state = await self._call("get_load_state", self.collection)
        if getattr(state.get("state"), "name", str(state.get("state"))) != "Loaded":
            await self._call("load_collection", self.collection)

    async def _check_schema(self) -> None:
        info = await self._call("describe_collection", self.collection)
        fields = {f["name"]: f for f in info.get("fields", [])}
        missing = [name for name in (*FIELDS, "vector") if name not in fields]
        if missing:
            raise MilvusPermanent(
                f"collection {self.collection!r} exists without fields {missing}: it was made by something else; "
                f"choose another HOTPATH_MILVUS_COLLECTION or drop it"
            )
        dim = int(fields["vector"].get("params", {}).get("dim", -1))
        if dim != self.dim:
            raise MilvusPermanent(
                f"collection {self.collection!r} holds {dim}-d vectors but the embedder makes {self.dim}-d ones: "
                f"set HOTPATH_MILVUS_COLLECTION to a new collection (and re-index) or use the matching embedder "
                f"(HOTPATH_EMBEDDER)"
            )

    async def drop_collection(self) -> None:
        """Drop the collection (tests, and a deliberate re-index)."""
        await self._call("drop_collection", self.collection)

    # -- data -------------------------------------------------------------------------------------------

    def check_rows(self, rows: Sequence[MessageRow]) -> None:
        """Raise MilvusPermanent naming the first row Milvus would refuse (wrong dimension, too long, bad id)."""
        for i, row in enumerate(rows):
            problem = row_problem(row, self.dim, self.text_max_bytes)
            if problem:
                raise MilvusPermanent(f"message {row.message_id!r} (row #{i}): {problem}")

    async def upsert(self, rows: Sequence[MessageRow]) -> int:
        """Upsert rows (validated first, sent in chunks under the message limit); returns the rows written."""
        self.check_rows(rows)
        written = 0
        for chunk in chunk_rows(rows, self.dim, max_bytes=self.max_batch_bytes, max_rows=self.max_batch_rows):
            await self._call("upsert", self.collection, [r.to_entity() for r in chunk])
            written += len(chunk)
        return written

    async def delete(self, pks: Sequence[str]) -> int:
        """Delete rows by primary key; returns how many Milvus reports deleted (unknown ids count as done)."""
        total = 0
        for start in range(0, len(pks), self.max_batch_rows):
            result = await self._call("delete", self.collection, ids=list(pks[start : start + self.max_batch_rows])
            )
            total += deleted_count(result)
        return total

    async def delete_room(self, tenant_id: str, room_id: str) -> int:
        """Delete every message of a room, by filter within the tenant."""
        expr = f"tenant_id == {quote(tenant_id)} and room_id == {quote(room_id)}"
        return deleted_count(await self._call("delete", self.collection, filter=expr))

    async def search(
        self, tenant_id: str, vector: Sequence[float], *, room_id: str | None = None, limit: int = 10
    ) -> list[Hit]:
        """The `limit` messages of `tenant_id` (and `room_id`) nearest to `vector`, best first."""
        problem = vector_problem(list(vector), self.dim)
        if problem:
            raise MilvusPermanent(f"search vector: {problem}")
        if not 1 <= limit <= 16384:
            raise MilvusPermanent(f"search limit must be between 1 and 16384, got {limit}")
        expr = f"tenant_id == {quote(tenant_id)}"
        if room_id is not None:
            expr += f" and room_id == {quote(room_id)}"
        result = await self._read("search", self.collection, [list(vector)], filter=expr, limit=limit,
            output_fields=list(FIELDS), anns_field="vector",
        )
        hits = []
        for hit in result[0] if result else []:
            entity = hit.get("entity", {})
            hits.append(Hit(score=float(hit["distance"]), **{f: entity.get(f) for f in FIELDS}))
        return hits

    async def count(self, tenant_id: str | None = None) -> int:
        """Rows in the collection (of one tenant when given)."""
        expr = f"tenant_id == {quote(tenant_id)}" if tenant_id is not None else 'pk != ""'
        result = await self._read("query", self.collection, filter=expr, output_fields=["count(*)"]
        )
        return int(result[0]["count(*)"]) if result else 0

    async def get(self, pks: Sequence[str]) -> list[dict[str, Any]]:
        """The stored rows of these primary keys (without vectors); missing keys are absent."""
        if not pks:
            return []
        result = await self._read("get", self.collection, ids=list(pks), output_fields=list(FIELDS)
        )
        return [dict(r) for r in result]
