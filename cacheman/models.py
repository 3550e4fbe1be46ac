"""Wire models of the cache API (request bodies and responses), as published in /openapi.json.

Responses are serialised with orjson straight from plain dicts on the hot path; these models are the
documented contract (and what bench and schemathesis read), kept in step by tests/cacheman/test_routes.py.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

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


class ErrorOut(BaseModel):
    error: str
    detail: str


class RoomsBatchIn(BaseModel):
    room_ids: list[Id] = Field(min_length=1, max_length=MAX_BATCH, description=f"1 to {MAX_BATCH} room ids (duplicates are answered once).")


class RoomsBatchOut(BaseModel):
    rooms: dict[str, RoomOut]
    missing: list[str] = Field(description="Requested ids that do not exist.")


class MembershipCheck(BaseModel):
    room_id: Id
    user_id: Id


class MembershipsCheckIn(BaseModel):
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
    events: list[Event] = Field(min_length=1, max_length=MAX_BATCH, description=f"1 to {MAX_BATCH} change events, applied in order.")


class EventResultOut(BaseModel):
    id: str
    type: str
    result: str = Field(description="`applied` (the cache changed) or `ignored` (duplicate, older than applied state, or nothing cached).")


class EventsOut(BaseModel):
    results: list[EventResultOut]
    applied: int
    ignored: int
