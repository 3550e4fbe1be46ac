"""Typed configuration of the index: the embedder, the Milvus store and the worker's batching and retry policy,
each one value built from the settings at the edge (`from_settings`) and passed in.

As cacheman's CacheConfig: library code never reads the environment, and each field is read by name, so a
renamed setting fails at start-up instead of becoming a silent default. Each field's meaning is the
description of its `HOTPATH_*` setting in hotpath/settings.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from index_worker.embed import Embedder, make_embedder

if TYPE_CHECKING:
    from index_worker.store import MilvusStore

MINILM_DIM = 384
QUEUE = "index"
TASK = "index_event"


@dataclass(frozen=True, slots=True)
class EmbedderConfig:
    kind: str = "minilm"  # HOTPATH_EMBEDDER
    batch_size: int = 64  # HOTPATH_EMBED_BATCH_SIZE
    url: str = ""  # HOTPATH_EMBEDDER_URL
    model: str = ""  # HOTPATH_EMBEDDER_MODEL
    dim_setting: int = 384  # HOTPATH_EMBEDDER_DIM
    api_key: str = field(default="", repr=False)  # HOTPATH_EMBEDDER_API_KEY
    connect_timeout_s: float = 2.0  # HOTPATH_EMBEDDER_CONNECT_TIMEOUT_S
    read_timeout_s: float = 30.0  # HOTPATH_EMBEDDER_READ_TIMEOUT_S
    max_attempts: int = 4  # HOTPATH_EMBEDDER_MAX_ATTEMPTS

    @classmethod
    def from_settings(cls, s: Any) -> EmbedderConfig:
        return cls(kind=s.embedder, batch_size=s.embed_batch_size, url=s.embedder_url, model=s.embedder_model,
                   dim_setting=s.embedder_dim, api_key=s.embedder_api_key,
                   connect_timeout_s=s.embedder_connect_timeout_s, read_timeout_s=s.embedder_read_timeout_s,
                   max_attempts=s.embedder_max_attempts)

    @property
    def dim(self) -> int:
        """The vectors' dimension, known without loading the model (the intake checks vectors against it)."""
        return MINILM_DIM if self.kind == "minilm" else self.dim_setting

    def build(self) -> Embedder:
        """The embedder (MiniLM is loaded on its first embed, or by `await embedder.load()`)."""
        if self.kind == "hash":
            return make_embedder("hash", dim=self.dim_setting)
        if self.kind == "minilm":
            return make_embedder("minilm", batch_size=self.batch_size)
        if not self.url or not self.model:
            raise ValueError("HOTPATH_EMBEDDER=http needs HOTPATH_EMBEDDER_URL and HOTPATH_EMBEDDER_MODEL")
        return make_embedder("http", url=self.url, model=self.model, dim=self.dim_setting,
                             api_key=self.api_key or None, connect_timeout_s=self.connect_timeout_s,
                             read_timeout_s=self.read_timeout_s, max_attempts=self.max_attempts,
                             batch_size=self.batch_size)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    uri: str = "http://127.0.0.1:19530"  # HOTPATH_MILVUS_URI
    collection: str = "hotpath_messages"  # HOTPATH_MILVUS_COLLECTION
    token: str = field(default="", repr=False)  # HOTPATH_MILVUS_TOKEN
    timeout_s: float = 10.0  # HOTPATH_MILVUS_TIMEOUT_S
    index_type: str = "AUTOINDEX"  # HOTPATH_MILVUS_INDEX_TYPE
    text_max_bytes: int = 8192  # HOTPATH_INDEX_TEXT_MAX_BYTES
    batch_rows: int = 1000  # HOTPATH_INDEX_UPSERT_BATCH_ROWS (the API's search store: the default)
    batch_bytes: int = 16 * 1024 * 1024  # HOTPATH_INDEX_UPSERT_BATCH_BYTES

    @classmethod
    def from_settings(cls, s: Any, *, writer: bool = True) -> StoreConfig:
        """The store of a worker (`writer`), or of the API's search, whose store never upserts (its settings have
        no upsert batch limits)."""
        batches = {"batch_rows": s.index_upsert_batch_rows, "batch_bytes": s.index_upsert_batch_bytes} if writer else {}
        return cls(uri=s.milvus_uri, collection=s.milvus_collection, token=s.milvus_token, timeout_s=s.milvus_timeout_s,
                   index_type=s.milvus_index_type, text_max_bytes=s.index_text_max_bytes, **batches)

    def build(self, dim: int) -> MilvusStore:
        from index_worker.store import MilvusStore

        return MilvusStore(self.uri, collection=self.collection, dim=dim, token=self.token or None,
                           timeout_s=self.timeout_s, text_max_bytes=self.text_max_bytes, index_type=self.index_type,
                           max_batch_rows=self.batch_rows, max_batch_bytes=self.batch_bytes)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    embedder: EmbedderConfig
    store: StoreConfig
    guard_prefix: str = "hp:tk:ix:"  # HOTPATH_TASKKIT_PREFIX + "ix:" (the guard lives beside the queue's keys)
    concurrency: int = 256  # HOTPATH_INDEX_CONCURRENCY
    linger_s: float = 0.1  # HOTPATH_INDEX_LINGER_S
    tombstone_ttl_s: int = 604_800  # HOTPATH_INDEX_TOMBSTONE_TTL_S
    lease_ttl_s: float = 120.0  # HOTPATH_INDEX_LEASE_TTL_S
    task_timeout_s: float = 120.0  # HOTPATH_INDEX_TASK_TIMEOUT_S
    max_attempts: int = 10  # HOTPATH_INDEX_MAX_ATTEMPTS
    backoff_base_s: float = 1.0  # HOTPATH_INDEX_BACKOFF_BASE_S
    backoff_cap_s: float = 300.0  # HOTPATH_INDEX_BACKOFF_CAP_S
    metrics_port: int = 9101  # HOTPATH_INDEX_METRICS_PORT (0: off)
    metrics_host: str = "127.0.0.1"  # HOTPATH_INDEX_METRICS_HOST

    @classmethod
    def from_settings(cls, s: Any) -> WorkerConfig:
        return cls(
            embedder=EmbedderConfig.from_settings(s), store=StoreConfig.from_settings(s),
            guard_prefix=s.taskkit_prefix + "ix:", concurrency=s.index_concurrency, linger_s=s.index_linger_s,
            tombstone_ttl_s=s.index_tombstone_ttl_s, lease_ttl_s=s.index_lease_ttl_s,
            task_timeout_s=s.index_task_timeout_s, max_attempts=s.index_max_attempts,
            backoff_base_s=s.index_backoff_base_s, backoff_cap_s=s.index_backoff_cap_s,
            metrics_port=s.index_metrics_port, metrics_host=s.index_metrics_host,
        )

    @property
    def batch_items(self) -> int:
        """Events per batch: half the concurrency (one batch fills while the previous one is written), at most
        the upsert batch."""
        return max(1, min(self.store.batch_rows, self.concurrency // 2))
