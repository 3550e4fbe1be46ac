"""Wire models of the cache API (request bodies and responses), as published in /openapi.json.

Responses are serialised with orjson straight from plain dicts on the hot path; these models are the
documented contract (and what bench and schemathesis read), kept in step by tests/cacheman/test_routes.py.
`Problem` is the body of every error (cacheman/problems.py renders it). Request bodies carry an example
(demo data), which the tests that walk the route table send.
"""

from __future__ import annotations

from typing import Annotated, NotRequired

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from cacheman.events import Event
from cacheman.keys import ID_MAX_LEN, ID_PATTERN, MAX_BATCH

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN, max_length=ID_MAX_LEN)]


class RoomOut(BaseModel):
    room_id: str
    name: str
    topic: str = ""
    version: int = 0
    last_seq: int = Field(0, description="Seq of the room's latest message (max of the origin and applied message.created events).")
    updated_at: str = ""


class MemberOut(BaseModel):
    user_id: str
    role: str


class MembersOut(BaseModel):
    room_id: str
    version: int = Field(description="The room's members_version this list reflects.")
    members: list[MemberOut]


class MembershipOut(BaseModel):
    room_id: str
    user_id: str
    role: str


class UserRoomsOut(BaseModel):
    user_id: str
    rooms: list[str]


class UnreadOut(BaseModel):
    total: int
    rooms: dict[str, int] = Field(description="room_id → max(0, room last_seq − user's last_read_seq)")


class FieldError(TypedDict):
    """One field of a 422: where (`loc`, e.g. ["body", "room_ids"]), what is wrong, and the error's type."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    loc: list[str | int]
    msg: str
    type: str


class Problem(TypedDict):
    """RFC 9457 problem details, the body of every error (application/problem+json). `type` is a stable
    `urn:hotpath:error:<kind>` (or `about:blank` for a plain HTTP status); members beyond these may be added."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]

    type: Annotated[str, Field(description="urn:hotpath:error:<kind>, one per error kind (README, Errors)")]
    title: Annotated[str, Field(description="Short summary of the kind; the same for every error of one type")]
    status: Annotated[int, Field(description="The HTTP status code")]
    detail: Annotated[str, Field(description="What was wrong in this request, and what to do")]
    instance: Annotated[str, Field(description="The request path")]
    request_id: Annotated[str, Field(description="X-Request-ID of the request (quote it when reporting)")]
    retry_after_s: NotRequired[Annotated[float, Field(description="429, and 503 when known: seconds to wait (also Retry-After)")]]
    dependency: NotRequired[Annotated[str, Field(description="503: the dependency that is down (redis, origin)")]]
    errors: NotRequired[Annotated[list[FieldError], Field(description="422: the field errors (input values are not echoed)")]]
    tenant: NotRequired[Annotated[str, Field(description="403 tenant-forbidden, 429 rate-limited: the tenant of the path")]]
    scope: NotRequired[Annotated[str, Field(description="403 scope-missing: the scope the route needs")]]
    queue: NotRequired[Annotated[str, Field(description="429 queue-full: the queue that is full")]]


class RoomsBatchIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"room_ids": ["room-01", "room-02"]}]})

    room_ids: list[Id] = Field(min_length=1, max_length=MAX_BATCH, description=f"1 to {MAX_BATCH} room ids (duplicates are answered once).")


class RoomsBatchOut(BaseModel):
    rooms: dict[str, RoomOut]
    missing: list[str] = Field(description="Requested ids that do not exist.")


class MembershipCheck(BaseModel):
    room_id: Id
    user_id: Id


class MembershipsCheckIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"checks": [{"room_id": "room-01", "user_id": "user-005"}]}]})

    checks: list[MembershipCheck] = Field(min_length=1, max_length=MAX_BATCH, description=f"1 to {MAX_BATCH} (room, user) pairs.")


class MembershipResult(BaseModel):
    room_id: str
    user_id: str
    member: bool
    role: str | None
    room_exists: bool


class MembershipsCheckOut(BaseModel):
    results: list[MembershipResult] = Field(description="One per check, in request order.")


class EventsIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"events": [{"id": "evt-1", "type": "message.created", "room_id": "room-01", "seq": 42}]}]})

    events: list[Event] = Field(min_length=1, max_length=MAX_BATCH, description=f"1 to {MAX_BATCH} change events, applied in order.")


class EventResultOut(BaseModel):
    id: str
    type: str
    result: str = Field(description="`applied` (the cache changed) or `ignored` (duplicate, older than applied state, or nothing cached).")


class EventsOut(BaseModel):
    results: list[EventResultOut]
    applied: int
    ignored: int
