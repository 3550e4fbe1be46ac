"""The origin contract: what cacheman asks the source of truth (dbman HTTP or SQL).

Every adapter (origin/http.py, origin/sql.py) implements `Origin`; all return plain pydantic models,
raise `OriginUnavailable` when they cannot answer, and return None / empty for "not found".
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel


class Room(BaseModel):
    room_id: str
    name: str
    topic: str = ""
    version: int = 0
    last_seq: int = 0
    updated_at: str = ""


class Member(BaseModel):
    user_id: str
    role: str


class Members(BaseModel):
    room_id: str
    version: int = 0
    members: list[Member]


class ReadState(BaseModel):
    """One room of a user: the room's latest message seq and the user's last read seq."""

    room_id: str
    last_seq: int
    last_read_seq: int


class Origin(Protocol):
    """Source of truth. Reads only; writes reach cacheman as change events."""

    name: str

    async def get_room(self, tenant: str, room_id: str) -> Room | None: ...

    async def get_rooms(self, tenant: str, room_ids: list[str]) -> dict[str, Room]: ...

    async def get_members(self, tenant: str, room_id: str) -> Members | None:
        """None when the room does not exist."""
        ...

    async def get_user_rooms(self, tenant: str, user_id: str) -> list[str]: ...

    async def get_read_states(self, tenant: str, user_id: str) -> list[ReadState]:
        """One entry per room the user is a member of."""
        ...

    async def ping(self) -> None:
        """Raise OriginUnavailable when the origin cannot answer (used by /readyz)."""
        ...

    async def aclose(self) -> None: ...


def open_origin(url: str, *, timeout_s: float = 2.0, **kwargs) -> Origin:
    """Pick the adapter by the URL scheme (see HOTPATH_ORIGIN_URL)."""
    if url.startswith(("http://", "https://")):
        from cacheman.origin.http import HttpOrigin

        return HttpOrigin([u.strip() for u in url.split(",") if u.strip()], timeout_s=timeout_s, **kwargs)
    if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        from cacheman.origin.sql import SqlOrigin

        return SqlOrigin(url, timeout_s=timeout_s, **kwargs)
    raise ValueError(
        f"HOTPATH_ORIGIN_URL {url!r}: expected http(s)://, postgresql+asyncpg:// or sqlite+aiosqlite://"
    )
