"""The index intake: the wire model of message events, the producer function that enqueues them, and the route
`POST /v1/{tenant}/index` built for the API to mount (docs/index-events.md is the contract).

Why a route builder taking its auth dependency and error responses: the worker package owns its intake, yet
must not import cacheman; the process that serves the route (hotpath/api.py) passes in the cache API's auth
and problem responses, so one token and one error contract cover every route.
Why one job per event: retries, dead-letters and idempotency stay per event; the worker batches them again.
(No `from __future__ import annotations`: FastAPI must see the route's locally built body model itself.)
"""

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator
from redis.exceptions import RedisError

from index_worker.config import QUEUE, TASK
from taskkit.errors import QueueUnavailable
from taskkit.producer import EnqueuedMany, JobSpec, Producer

# The id rule of the whole API (the same as cacheman/keys.py ID_PATTERN, declared here so that index_worker does
# not depend on cacheman): a letter or digit, then letters, digits and . _ : - ; at most 64 characters.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
ID_MAX_LEN = 64
MAX_EVENTS = 1000
VERSION_MAX = 2**63 - 1
_ID_DOC = f"Pattern `{ID_PATTERN}`."

Id = Annotated[str, Field(pattern=ID_PATTERN, max_length=ID_MAX_LEN, description=_ID_DOC)]
Version = Annotated[int, Field(ge=0, le=VERSION_MAX, description="Version of the message (0 = backfill); the newest wins.")]
Finite = Annotated[float, Field(allow_inf_nan=False)]

EXAMPLE = {"events": [
    {"op": "upsert", "room_id": "r1", "message_id": "m1", "version": 3, "text": "the deploy is done",
     "sender": "u1", "created_at": "2026-11-26T12:00:00Z"},
    {"op": "delete", "message_id": "m0", "version": 2},
]}


class IndexAccepted(BaseModel):
    """202: what was enqueued. `duplicates` are events already queued or recently done (same tenant, op,
    message and version), or repeated within the request: they are not enqueued twice."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"accepted": 2, "duplicates": 0}]})

    accepted: int = Field(ge=0, description="Events enqueued now.")
    duplicates: int = Field(ge=0, description="Events not enqueued because an equal one is queued or was just done.")


class DeleteEvent(BaseModel):
    """Remove a message from the index. A later upsert of the same or an older version is dropped."""

    op: Literal["delete"]
    message_id: Id
    version: Version


class DeleteRoomEvent(BaseModel):
    """Remove every indexed message of a room (within the tenant), for a room's deletion."""

    op: Literal["delete_room"]
    room_id: Id
    version: Version | None = Field(None, description="Optional; with it, a repeated request is a duplicate.")


@functools.cache
def wire_model(text_max_bytes: int, dim: int | None) -> type[BaseModel]:
    """The request model for these limits: texts of at most `text_max_bytes` UTF-8 bytes; vectors of `dim`
    numbers (None: not checked here — the worker checks, and dead-letters a wrong one)."""

    class UpsertEvent(BaseModel):
        """Index a message (or a newer version of it). Without `vector`, the index's embedder embeds `text`."""

        op: Literal["upsert"]
        room_id: Id
        message_id: Id
        version: Version
        text: str = Field(min_length=1, description=f"The message text, 1 to {text_max_bytes} bytes in UTF-8 "
                                                    "(HOTPATH_INDEX_TEXT_MAX_BYTES).")
        sender: Id
        created_at: AwareDatetime = Field(description="When the message was created: RFC 3339 with a time zone.")
        vector: list[Finite] | None = Field(None, description="A precomputed embedding"
                                            + (f" of {dim} numbers." if dim is not None else ".") +
                                            " Stored with model `precomputed`.")

        @field_validator("text")
        @classmethod
        def _text_size(cls, v: str) -> str:
            try:
                size = len(v.encode())
            except UnicodeEncodeError:  # JSON may carry a lone surrogate ("\ud800"), which no index can store
                raise ValueError("text must be valid Unicode (it holds a lone surrogate)") from None
            if size > text_max_bytes:
                raise ValueError(f"text is {size} bytes in UTF-8; the index takes at most {text_max_bytes} "
                                 "(HOTPATH_INDEX_TEXT_MAX_BYTES)")
            return v

        @field_validator("vector")
        @classmethod
        def _vector_dim(cls, v: list[float] | None) -> list[float] | None:
            if v is not None and dim is not None and len(v) != dim:
                raise ValueError(f"vector has {len(v)} dimensions; the index has {dim}: send {dim} numbers or none")
            return v

        @field_validator("created_at")
        @classmethod
        def _after_epoch(cls, v: datetime) -> datetime:
            if v < datetime(1970, 1, 1, tzinfo=UTC):
                raise ValueError("created_at must not be before 1970-01-01T00:00:00Z")
            return v

    Event = Annotated[UpsertEvent | DeleteEvent | DeleteRoomEvent, Field(discriminator="op")]

    class IndexRequest(BaseModel):
        """1 to 1,000 message events of one tenant (docs/index-events.md)."""

        model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE]})

        events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS,
                                    description=f"1 to {MAX_EVENTS} events, applied newest version first per message.")

    return IndexRequest


def to_job(tenant: str, ev: BaseModel) -> dict[str, Any]:
    """The job payload of one event (what the worker's `index_event` task receives): a plain dict,
    created_at in epoch milliseconds, so `hotpath dlq show` prints it as is."""
    if ev.op == "upsert":
        ms = math.floor(ev.created_at.timestamp() * 1000)
        return {"op": "upsert", "tenant_id": tenant, "room_id": ev.room_id, "message_id": ev.message_id,
                "version": ev.version, "text": ev.text, "sender": ev.sender, "created_at": ms,
                "vector": list(ev.vector) if ev.vector is not None else None}
    if ev.op == "delete":
        return {"op": "delete", "tenant_id": tenant, "message_id": ev.message_id, "version": ev.version}
    return {"op": "delete_room", "tenant_id": tenant, "room_id": ev.room_id,
            "version": ev.version if ev.version is not None else 0}


def idempotency_key(tenant: str, ev: BaseModel) -> str | None:
    """Tenant, op, message (or room) and version: a replay is a duplicate, an edit (a new version) never is.
    `|` separates the parts, a character no id may contain, so two different events never share a key."""
    if ev.op == "delete_room":
        return None if ev.version is None else f"{tenant}|delete_room|{ev.room_id}|{ev.version}"
    return f"{tenant}|{ev.op}|{ev.message_id}|{ev.version}"


async def enqueue_index_events(producer: Producer, tenant: str, events: Iterable[Mapping[str, Any] | BaseModel], *,
                               text_max_bytes: int = 8192, dim: int | None = None,
                               backpressure: bool = True) -> EnqueuedMany:
    """Validate and enqueue message events of `tenant` on the `index` queue: one Redis round trip, all or nothing.

    For services that enqueue directly instead of calling the API. Events are dicts of the wire shape (or the
    models); invalid ones raise pydantic's ValidationError (nothing enqueued). `dim` None leaves the vector
    dimension to the worker, which dead-letters a wrong one with its reason. Raises QueueFull(retry_after)
    over the high watermark and QueueUnavailable when the queue's Redis does not answer.
    """
    if not isinstance(tenant, str) or not re.fullmatch(ID_PATTERN, tenant):
        raise ValueError(f"tenant {tenant!r} does not match {ID_PATTERN}")
    raw = [e.model_dump() if isinstance(e, BaseModel) else e for e in events]
    request = wire_model(text_max_bytes, dim).model_validate({"events": raw})
    return await enqueue_request(producer, tenant, request.events, backpressure=backpressure)


async def enqueue_request(producer: Producer, tenant: str, events: list[BaseModel], *,
                          backpressure: bool = True) -> EnqueuedMany:
    """Enqueue already validated events (the route's path)."""
    jobs = [JobSpec(args=(to_job(tenant, ev),), idempotency_key=idempotency_key(tenant, ev)) for ev in events]
    try:
        return await producer.enqueue_many(TASK, jobs, queue=QUEUE, backpressure=backpressure)
    except (RedisError, OSError) as exc:
        raise QueueUnavailable(QUEUE, f"its Redis did not answer ({type(exc).__name__}: {exc})") from exc


def build_router(*, auth_dependency: Callable[..., Any], producer: Callable[[Request], Producer],
                 text_max_bytes: int, dim: int | None, responses: dict[int | str, Any] | None = None) -> APIRouter:
    """`POST /v1/{tenant}/index` → 202 IndexAccepted. `auth_dependency` authenticates and authorises the
    tenant (scope index:write); `producer(request)` is the API's Producer; `responses` documents the errors."""
    request_model = wire_model(text_max_bytes, dim)
    router = APIRouter(prefix="/v1/{tenant}", tags=["index"], responses=responses or {})
    tenant_param = Annotated[str, Path(pattern=ID_PATTERN, max_length=ID_MAX_LEN, description="Tenant id. " + _ID_DOC)]

    @router.post("/index", status_code=202, response_model=IndexAccepted, dependencies=[Depends(auth_dependency)],
                 summary="Enqueue 1 to 1,000 message events for the search index (scope index:write).",
                 description="Admitted whole or not at all: over the `index` queue's high watermark the request "
                             "is refused with 429 and Retry-After, nothing enqueued. See docs/index-events.md.")
    async def post_index(tenant: tenant_param, body: request_model, request: Request) -> IndexAccepted:  # type: ignore[valid-type]
        done = await enqueue_request(producer(request), tenant, body.events)
        return IndexAccepted(accepted=done.accepted, duplicates=done.duplicates)

    return router
