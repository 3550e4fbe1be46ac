"""Search of the message index: a Searcher (the query embedded with the index's embedder, then the tenant's
nearest messages) and the route `GET /v1/{tenant}/search` built for the API to mount; `hotpath search` uses it too.

Why lazy: the embedder (MiniLM: ~0.5 s and a few hundred MB, README "Search") and the Milvus connection are made on
the first search, so an API that never searches pays nothing. Why SearchUnavailable: index_worker does not
import cacheman; the edge maps it to the API's 503 problem naming the dependency (milvus or embedder).
"""

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from index_worker.config import EmbedderConfig, StoreConfig
from index_worker.embed import Embedder
from index_worker.intake import ID_MAX_LEN, ID_PATTERN
from index_worker.milvus_errors import MilvusOverloaded, MilvusPermanent, MilvusTransient
from index_worker.store import Hit, MilvusStore, quiet_pymilvus_logs
from taskkit.errors import TaskkitError

MAX_LIMIT = 100
QUERY_MAX_CHARS = 2000


class SearchUnavailable(Exception):
    """The search could not be answered because `dependency` (milvus | embedder) failed; `retry_after_s` when
    that dependency said when to come back."""

    def __init__(self, dependency: str, detail: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.dependency = dependency
        self.detail = detail
        self.retry_after_s = retry_after_s


class Searcher:
    """Embeds a query and searches one tenant's messages; builds its embedder and store on first use."""

    def __init__(self, embedder: EmbedderConfig, store: StoreConfig) -> None:
        self.embedder_config = embedder
        self.store_config = store
        self.embedder: Embedder | None = None
        self.store: MilvusStore | None = None
        self._ready = False
        self._lock = asyncio.Lock()

    async def _ensure(self) -> tuple[Embedder, MilvusStore]:
        if not self._ready:
            async with self._lock:
                if self.embedder is None:
                    quiet_pymilvus_logs()
                    embedder = self.embedder_config.build()
                    load = getattr(embedder, "load", None)
                    if load is not None:
                        await load()
                    self.embedder = embedder
                if self.store is None:
                    self.store = self.store_config.build(self.embedder.dim)
                if not self._ready:
                    try:
                        await self.store.ensure_collection()  # idempotent; the worker creates it too
                    except (MilvusTransient, MilvusPermanent) as exc:
                        raise SearchUnavailable("milvus", f"the index collection is not available: {exc}",
                                                retry_after_s=getattr(exc, "retry_after", None)) from exc
                    self._ready = True
        assert self.embedder is not None and self.store is not None
        return self.embedder, self.store

    async def search(self, tenant: str, query: str, *, room_id: str | None = None, limit: int = 10) -> list[Hit]:
        """The `limit` messages of `tenant` (in `room_id`) nearest to `query`, best first."""
        embedder, store = await self._ensure()
        try:
            [vector] = await embedder.embed([query])
        except TaskkitError as exc:
            raise SearchUnavailable("embedder", f"the query could not be embedded: {exc}",
                                    retry_after_s=getattr(exc, "retry_after", None)) from exc
        try:
            return await store.search(tenant, vector, room_id=room_id, limit=limit)
        except (MilvusTransient, MilvusOverloaded, MilvusPermanent) as exc:
            raise SearchUnavailable("milvus", f"the search failed: {exc}",
                                    retry_after_s=getattr(exc, "retry_after", None)) from exc

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
        aclose = getattr(self.embedder, "aclose", None)
        if aclose is not None:
            await aclose()


def iso_ms(epoch_ms: int) -> str:
    """RFC 3339 (UTC, milliseconds) of an epoch-milliseconds time."""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SearchHit(BaseModel):
    score: float = Field(description="Cosine similarity of the message to the query (higher is closer).")
    message_id: str
    room_id: str
    sender: str
    created_at: str = Field(description="When the message was created (RFC 3339, UTC).")
    version: int
    text: str
    model: str = Field(description="Embedding model of the row (`name@version` or `precomputed`).")

    @classmethod
    def of(cls, hit: Hit) -> "SearchHit":
        return cls(score=hit.score, message_id=hit.message_id, room_id=hit.room_id, sender=hit.sender,
                   created_at=iso_ms(hit.created_at), version=hit.version, text=hit.text, model=hit.model)


class SearchOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"hits": [
        {"score": 0.83, "message_id": "m1", "room_id": "r1", "sender": "u1", "created_at": "2026-11-26T12:00:00.000Z",
         "version": 3, "text": "the deploy is done", "model": "sentence-transformers/all-MiniLM-L6-v2@1.0.0"}]}]})

    hits: list[SearchHit] = Field(description="The tenant's nearest messages, best first.")


def build_router(*, auth_dependency: Callable[..., Any], searcher: Callable[[Request], Searcher],
                 responses: dict[int | str, Any] | None = None) -> APIRouter:
    """`GET /v1/{tenant}/search?q=…&room=…&limit=…` → SearchOut. `auth_dependency` checks the tenant (scope
    cache:read); `searcher(request)` is the API's Searcher."""
    router = APIRouter(prefix="/v1/{tenant}", tags=["search"], responses=responses or {})
    tenant_param = Annotated[str, Path(pattern=ID_PATTERN, max_length=ID_MAX_LEN, description=f"Tenant id. Pattern `{ID_PATTERN}`.")]

    @router.get("/search", response_model=SearchOut, dependencies=[Depends(auth_dependency)],
                summary="The tenant's messages nearest to a text (scope cache:read).")
    async def search(
        tenant: tenant_param, request: Request,
        q: Annotated[str, Query(min_length=1, max_length=QUERY_MAX_CHARS, description="The text to search for.",
                                examples=["deploy done"])],
        room: Annotated[str | None, Query(pattern=ID_PATTERN, max_length=ID_MAX_LEN,
                                          description="Only this room's messages.")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"How many (1 to {MAX_LIMIT}).")] = 10,
    ) -> SearchOut:
        hits = await searcher(request).search(tenant, q, room_id=room, limit=limit)
        return SearchOut(hits=[SearchHit.of(h) for h in hits])

    return router
