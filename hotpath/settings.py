"""Every setting of every hotpath process, read once at the edge (pydantic-settings, env `HOTPATH_*`, `.env`).

One class per process. Shared groups are mixins so a variable means the same thing in every process.
`describe_settings()` feeds the README table and the compose check, so the three never drift apart.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator  # noqa: F401
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as _ParseError

ENV_PREFIX = "HOTPATH_"
DEV_JWT_KID = "dev"
DEV_JWT_SECRET = "hotpath-dev-only-secret-change-me-0123456789"
# What to set when the task queues' Redis is a Cluster (start-up errors of every process that enqueues or works).
QUEUE_REDIS_FIX = ("set HOTPATH_QUEUE_REDIS_URL to one Redis node (not a Cluster), or HOTPATH_QUEUE_SENTINELS and "
                   "HOTPATH_QUEUE_SENTINEL_MASTER for a Sentinel-managed one")


class _Base(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )


class CommonSettings(_Base):
    """Settings every process shares."""

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis/Valkey URL for the cache, the queues and the rate limits. `hotpath dev` starts an embedded Valkey when unset.",
    )
    redis_timeout_s: float = Field(2.0, gt=0, description="Connect and command timeout for every Redis call, seconds.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level (JSON lines on stderr).")
    tracing: Literal["auto", "off", "otlp", "console"] = Field("auto", description="OpenTelemetry tracing of the API and the workers (README: Tracing): `otlp` exports to the collector the standard OTEL_EXPORTER_OTLP_* variables name, `console` prints spans as JSON lines on stdout, `off` installs nothing; `auto` is `otlp` when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, else `off`.")
    data_dir: str = Field(".hotpath", description="Where `hotpath dev` keeps its data (SQLite origin, Milvus Lite, logs).")
    taskkit_prefix: str = Field(
        "hp:tk:",
        description="Key prefix of every task-queue key (queues, retry and dead-letter queues, audit log); producers, workers and the ops CLI must agree.",
    )
    redis_cluster: bool = Field(False, description="The cache's Redis is a Redis / Valkey Cluster: HOTPATH_REDIS_URL names one or more seed nodes, comma-separated (`redis://n1:6379,redis://n2:6379`); the cache, rate limits, near-cache broadcast and events stream use it (docs/cluster.md). The task queues cannot: set HOTPATH_QUEUE_REDIS_URL.")
    # the task queues' Redis (taskkit/connection.py QueueRedis, built by queue_redis_config())
    queue_redis_url: str = Field("", description="Redis URL of the task queues (taskkit/ARQ: producers, workers, the ops CLI, the index version guard): one node, never a Cluster. Empty: HOTPATH_REDIS_URL when that is one node. With HOTPATH_QUEUE_SENTINELS it gives only the database, credentials and TLS (`redis://:password@/0`).")
    queue_sentinels: str = Field("", description="Redis Sentinels of the task queues, `host:port,host:port`: the queues' Redis is then the master HOTPATH_QUEUE_SENTINEL_MASTER that they name, followed across failovers.")
    queue_sentinel_master: str = Field("mymaster", description="Name of the queues' master as the Sentinels know it (`sentinel monitor <name> …`).")
    queue_wait_replicas: int = Field(0, ge=0, le=16, description="An enqueue is acknowledged only once this many replicas have the job (Redis WAIT after the enqueue; fewer within HOTPATH_QUEUE_WAIT_TIMEOUT_MS → 503, sending again is deduplicated). 0: at once; a failover can then lose jobs acknowledged just before it, or while the old primary still takes writes (README: Task queues on their own Redis).")
    queue_wait_timeout_ms: int = Field(1000, ge=1, le=60_000, description="Longest an enqueue waits for HOTPATH_QUEUE_WAIT_REPLICAS replicas, milliseconds.")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://", "valkey://")):
            raise ValueError("expected a redis://host:port/db URL (or rediss:// or unix://)")
        return v

    @field_validator("queue_redis_url")
    @classmethod
    def _queue_url(cls, v: str) -> str:
        if v and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected a redis://host:port/db URL (or rediss:// or unix://)")
        if "," in v:
            raise ValueError("expected one Redis node: the task queues cannot use a Redis Cluster (ARQ's keys of one job span hash slots)")
        return v

    @field_validator("queue_sentinels")
    @classmethod
    def _sentinels(cls, v: str) -> str:
        from taskkit.connection import parse_sentinels

        parse_sentinels(v)  # ValueError names the bad part
        return v

    def queue_redis_config(self) -> Any:
        """The task queues' Redis (taskkit.connection.QueueRedis). Raises QueueRedisError when the queues would
        default to the cache's Cluster: ARQ's keys cannot live on one."""
        from taskkit.connection import CLUSTER_WHY, QueueRedis, QueueRedisError, parse_sentinels

        sentinels = parse_sentinels(self.queue_sentinels)
        url = self.queue_redis_url
        if not url and not sentinels:
            if self.redis_cluster or "," in self.redis_url:
                raise QueueRedisError(f"HOTPATH_REDIS_URL is a Redis Cluster and HOTPATH_QUEUE_REDIS_URL is unset: "
                                      f"{CLUSTER_WHY}; {QUEUE_REDIS_FIX}")
            url = self.redis_url.replace("valkey://", "redis://", 1)
        return QueueRedis(url=url or "redis://", sentinels=sentinels, sentinel_master=self.queue_sentinel_master,
                          timeout_s=self.redis_timeout_s, wait_replicas=self.queue_wait_replicas,
                          wait_timeout_ms=self.queue_wait_timeout_ms)


class UploadsSettings(_Base):
    """The uploads bucket, as the thumbnail worker and the API's storage-event intake both see it."""

    uploads_bucket: str = Field("uploads", description="Bucket where uploaded images land.")


class ThumbQueueSettings(_Base):
    """The `thumb` queue's watermarks, as its producers (the storage-event intake, `hotpath thumbs backfill`) see them."""

    thumb_queue_high: int = Field(2_000, ge=2, description="High watermark of the `thumb` queue (jobs ready or running): a storage-event request that would pass it is refused whole with 429 (MinIO keeps the event in its queue_dir and sends it again); `hotpath thumbs backfill` waits.")
    thumb_queue_low: int = Field(1_000, ge=1, description="Low watermark of the `thumb` queue: once refusing, producers are admitted again when the depth is down to it (hysteresis).")


class StorageSettings(UploadsSettings):
    """Object storage (MinIO / any S3) settings."""

    s3_endpoint: str = Field(
        "http://127.0.0.1:9000",
        description="S3/MinIO endpoint URL. `hotpath dev` starts moto's S3 server when unset.",
    )
    s3_access_key: str = Field("minioadmin", description="S3 access key.")
    s3_secret_key: str = Field("minioadmin", description="S3 secret key.")
    s3_region: str = Field("us-east-1", description="S3 region.")
    thumbnails_bucket: str = Field("thumbnails", description="Bucket the thumbnails are written to.")

    @field_validator("s3_endpoint")
    @classmethod
    def _http_scheme(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return v.rstrip("/")


class MilvusSettings(_Base):
    milvus_uri: str = Field(
        "http://127.0.0.1:19530",
        description="Milvus gRPC endpoint. `hotpath dev` starts `milvus-lite server` when unset.",
    )
    milvus_timeout_s: float = Field(10.0, gt=0, description="Timeout of every Milvus call, seconds.")


class IndexSettings(_Base):
    """The message index, as both its writer (`hotpath worker index`) and its reader (the API's search) see it."""

    milvus_collection: str = Field("hotpath_messages", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$", description="Milvus collection of the indexed messages (all tenants; `tenant_id` is its partition key). Created with its index at worker start.")
    milvus_token: str = Field("", description="Milvus token (`user:password` or an API key); empty for none (Milvus Lite).")
    milvus_index_type: str = Field("AUTOINDEX", description="Vector index type of a new collection (AUTOINDEX, HNSW, IVF_FLAT, FLAT…; COSINE metric).")
    index_text_max_bytes: int = Field(8192, ge=1, le=65535, description="Longest message text indexed, UTF-8 bytes; a longer one is refused at intake (422) and dead-lettered by the worker.")
    embedder: Literal["minilm", "http", "hash"] = Field("minilm", description="Embedder of messages and search queries: `minilm` (offline all-MiniLM-L6-v2, 384-d), `http` (an OpenAI-compatible /v1/embeddings service), `hash` (feature hashing; tests and benchmarks).")
    embed_batch_size: int = Field(64, ge=1, le=1024, description="Texts per embedding call (MiniLM encode batch / HTTP request).")
    embedder_url: str = Field("", description="Base URL of the embedding service (`http` embedder): POST {url}/v1/embeddings.")
    embedder_model: str = Field("", description="Model name sent to the embedding service (`http` embedder); stored with each row.")
    embedder_dim: int = Field(384, ge=1, le=32768, description="Vector dimension of the `http` and `hash` embedders (MiniLM is always 384); must match the collection.")
    embedder_api_key: str = Field("", description="Bearer token of the embedding service (`http` embedder); empty for none.")
    embedder_connect_timeout_s: float = Field(2.0, gt=0, description="Connect timeout of the embedding service, seconds.")
    embedder_read_timeout_s: float = Field(30.0, gt=0, description="Read timeout of one embedding request, seconds.")
    embedder_max_attempts: int = Field(4, ge=1, le=20, description="Attempts of one embedding request on 429/5xx/timeouts (backoff with jitter, Retry-After honoured) before the job's own retry takes over.")

    @field_validator("embedder_url")
    @classmethod
    def _embedder_scheme(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return v


class OriginSettings(_Base):
    """The origin of truth, as the API and `hotpath index backfill` (which reads its `messages` table) see it."""

    origin_url: str = Field(
        "sqlite+aiosqlite:///.hotpath/origin.db",
        description="Origin of truth: `http(s)://dbman1,http://dbman2` (dbman HTTP contract), `postgresql+asyncpg://…` or `sqlite+aiosqlite:///…`.",
    )

    @field_validator("origin_url")
    @classmethod
    def _origin_scheme(cls, v: str) -> str:
        schemes = ("http://", "https://", "postgresql+asyncpg://", "sqlite+aiosqlite://")
        for part in v.split(","):
            if not part.strip().startswith(schemes):
                raise ValueError(f"expected a URL starting with one of {', '.join(schemes)}; got {part.strip()!r}")
        return v


class IndexQueueSettings(_Base):
    """The `index` queue's watermarks, as its producers (the API's intake, `hotpath index backfill`) see them."""

    # a request is admitted whole only if it fits under the high watermark (index_worker/intake.py)
    index_queue_high: int = Field(10_000, ge=2, description="High watermark of the `index` queue (jobs ready or running): an index request that would pass it is refused whole with 429 and Retry-After.")
    index_queue_low: int = Field(5_000, ge=1, description="Low watermark of the `index` queue: once refusing, intake accepts again when the depth is down to it (hysteresis).")


class ApiSettings(CommonSettings, OriginSettings, MilvusSettings, IndexSettings, IndexQueueSettings, UploadsSettings,
                  ThumbQueueSettings):
    """`hotpath api`: the cache API, the index intake and the search (hotpath/api.py composes them)."""

    host: str = Field("127.0.0.1", description="Address the API binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port the API listens on.")
    api_workers: int = Field(1, ge=1, le=64, description="API processes serving the one port (`hotpath api --workers N`): each has its own near cache, all invalidated by the broadcast; /metrics reports them all (Prometheus multiprocess mode, README: Several API processes).")
    origin_timeout_s: float = Field(2.0, gt=0, description="Connect/read timeout of each origin call, seconds.")
    readyz_timeout_s: float = Field(1.0, gt=0, description="Timeout of each dependency check in /readyz, seconds.")
    jwt_keys: dict[str, str] = Field(
        default_factory=lambda: {DEV_JWT_KID: DEV_JWT_SECRET},
        description='HS256 keys by `kid`, JSON: `{"k1": "secret"}`, each at least 32 bytes. Several keys let a new one roll out before the old is retired. The default is a development key, which `hotpath api` refuses unless HOTPATH_ALLOW_DEV_KEY=true.',
    )
    jwt_public_keys: dict[str, str] = Field(
        default_factory=dict, description="Optional RS256 public keys (PEM) by `kid`, JSON."
    )
    allow_dev_key: bool = Field(
        False,
        description="Let `hotpath api` start with the built-in development JWT key, which anyone can read in the source: local experiments only (`hotpath dev` sets it for its children).",
    )
    rate_limit_per_s: float = Field(5000.0, ge=0, description="Per-tenant request rate (token bucket refill, requests/s); 0 turns the limit off.")
    rate_limit_burst: int = Field(10000, ge=1, description="Per-tenant burst (token bucket size, requests).")
    rate_limit_tenants: dict[str, tuple[float, int]] = Field(
        default_factory=dict, description='Per-tenant overrides of rate and burst, JSON: `{"acme": [100, 200]}`.'
    )
    origin_max_concurrency: int = Field(64, ge=1, le=10000, description="Most origin calls in flight at once per API process (HTTP origin) / SQL pool size.")
    origin_retries: int = Field(2, ge=0, le=10, description="Retries of an idempotent origin read after a transient failure (HTTP origin), with exponential backoff and jitter.")
    origin_breaker_failures: int = Field(5, ge=1, description="Failures within HOTPATH_ORIGIN_BREAKER_WINDOW_S that open an origin instance's circuit breaker.")
    origin_breaker_window_s: float = Field(10.0, gt=0, description="Sliding window for counting origin failures, seconds.")
    origin_breaker_open_s: float = Field(5.0, gt=0, description="How long an open breaker rejects calls before one half-open probe, seconds.")
    # cache (cacheman/config.py CacheConfig; events.py, stream.py, nearcache.py)
    redis_prefix: str = Field("hp", pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="Prefix of every cache key (`hp:{tenant}:{room:R}:members`).")
    cache_ttl_s: float = Field(300.0, gt=0, description="Freshness of a cached entry, seconds (before jitter).")
    cache_ttl_jitter: float = Field(0.1, ge=0, lt=1, description="TTL jitter: each fill's TTL is drawn from ttl × [1 − j, 1 + j] so keys filled together do not expire together.")
    cache_negative_ttl_s: float = Field(5.0, gt=0, description="Freshness of a cached 'not found', seconds.")
    cache_stale_ttl_s: float = Field(3600.0, ge=0, description="How long an expired entry is kept for stale-if-error (served with `X-Cache: stale` only while the origin is down).")
    cache_lease_ttl_ms: int = Field(3000, ge=10, description="Lifetime of a fill lease, ms; a fill slower than this is not written.")
    cache_lease_wait_s: float = Field(2.0, ge=0, description="How long a request waits for another process's fill (polling with backoff) before asking the origin itself.")
    cache_bypass_concurrency: int = Field(32, ge=1, description="Concurrent origin calls allowed while Redis is down (`X-Cache: bypass`); more wait, then 503.")
    cache_bypass_wait_s: float = Field(1.0, ge=0, description="How long a bypass request waits for a slot before answering 503.")
    cache_redis_retry_s: float = Field(1.0, gt=0, description="After a Redis failure, requests bypass Redis for this long before it is tried again.")
    near_cache_enabled: bool = Field(False, description="In-process near cache for membership checks, invalidated by a Redis pub/sub broadcast.")
    near_cache_ttl_s: float = Field(1.0, gt=0, description="Near-cache staleness bound: an entry is dropped after this long even if no broadcast arrives.")
    near_cache_max_entries: int = Field(100_000, ge=1, description="Near-cache size (rooms); the oldest are evicted first.")
    events_stream_enabled: bool = Field(False, description="Consume change events from a Redis Stream (consumer group) in the API process.")
    events_stream: str = Field("hp:events", description="Redis Stream of change events (fields `tenant`, `event` = JSON).")
    events_stream_group: str = Field("cacheman", description="Consumer group of the events stream.")
    events_stream_consumer: str = Field("", description="Consumer name in the group (default: hostname-pid).")
    events_stream_claim_idle_ms: int = Field(30_000, ge=100, description="Entries pending this long on another consumer are claimed (XAUTOCLAIM).")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted; larger → 413.")
    # storage-event intake (thumb_worker/intake.py): MinIO's bucket-notification webhook
    storage_webhook_token: str = Field("", description="Shared secret MinIO sends as `Authorization: Bearer <token>` to POST /v1/storage-events (the webhook target's `auth_token`), at least 16 characters; empty turns the route off (every call 401).")

    @field_validator("storage_webhook_token")
    @classmethod
    def _webhook_token_length(cls, v: str) -> str:
        if v and len(v) < 16:
            raise ValueError("must be at least 16 characters (or empty to turn the storage-event webhook off)")
        return v


class IndexWorkerSettings(CommonSettings, MilvusSettings, IndexSettings):
    """`hotpath worker index`: embeds messages and indexes them in Milvus."""

    index_concurrency: int = Field(256, ge=1, le=10000, description="Concurrent index jobs (one event each) per worker process; their events are batched, a batch flushing at half this many (so one fills while the previous is written), at most HOTPATH_INDEX_UPSERT_BATCH_ROWS.")
    index_upsert_batch_rows: int = Field(1000, ge=1, le=10000, description="Most events per batch and rows per Milvus upsert request.")
    index_upsert_batch_bytes: int = Field(16 * 1024 * 1024, ge=65536, lt=64 * 1024 * 1024, description="Most estimated bytes per Milvus upsert request (Milvus refuses messages over 64 MiB).")
    index_linger_s: float = Field(0.1, ge=0, le=1.0, description="Longest an event waits for its batch to fill before the batch is sent anyway, seconds.")
    index_tombstone_ttl_s: int = Field(604_800, ge=60, description="How long the version guard remembers a deleted message, seconds (default 7 days): an older upsert arriving later than that would index it again.")
    index_lease_ttl_s: float = Field(120.0, gt=0, description="Lease a batch holds on each message across its Milvus write (fences two workers writing two versions); at least 3 × (2 × HOTPATH_MILVUS_TIMEOUT_S + 1).")
    index_task_timeout_s: float = Field(120.0, gt=0, description="Time limit of one index job (waiting for its batch included), seconds; after a crash ARQ re-runs a job this long + 11 s after it started.")
    index_max_attempts: int = Field(10, ge=1, le=100, description="Attempts of an index job on transient errors (Milvus down, embedder busy) before it is dead-lettered.")
    index_backoff_base_s: float = Field(1.0, ge=0, description="Retry backoff of index jobs: the delay after attempt n is uniform(0, min(cap, base × 2^(n−1))), seconds.")
    index_backoff_cap_s: float = Field(300.0, ge=0, description="Cap of the index jobs' retry backoff, seconds.")
    index_metrics_port: int = Field(9101, ge=0, le=65535, description="Port of the worker's Prometheus /metrics (index counters, latencies, taskkit's `index` queue); 0 turns it off. A port in use is logged and skipped.")
    index_metrics_host: str = Field("127.0.0.1", description="Address the worker's /metrics binds to (0.0.0.0 to be scraped from other hosts).")


class ThumbWorkerSettings(CommonSettings, StorageSettings):
    """`hotpath worker thumb`: makes thumbnails of uploaded images."""

    thumb_concurrency: int = Field(4, ge=1, le=1000, description="Concurrent thumbnail jobs per worker process (each decodes in its own decoder subprocess).")
    thumb_sizes: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [64, 256, 1024],
        description="Thumbnail sizes, pixels on the long edge, comma-separated (`64,256,1024`); a source smaller than a size is never upscaled.",
    )
    thumb_format: Literal["webp", "jpeg", "avif"] = Field("webp", description="Thumbnail format: webp, jpeg or avif (written as `{key}/{size}.{ext}`).")
    thumb_quality: int = Field(80, ge=1, le=100, description="Encoder quality of the thumbnails (1-100).")
    thumb_max_bytes: int = Field(25_000_000, ge=1, description="Largest source object accepted, bytes (checked from its size before the download and again while reading); larger → dead-lettered.")
    thumb_max_pixels: int = Field(50_000_000, ge=1, description="Largest source accepted, width × height × frames, read from the header before decoding (decompression bombs); larger → dead-lettered.")
    thumb_time_limit_s: float = Field(30.0, gt=0, le=240, description="Time limit of one source's decode and thumbnails, seconds (at most 240: a job's own limit is 300 s); past it the decoder process is killed and the job dead-lettered.")
    thumb_s3_timeout_s: float = Field(10.0, gt=0, description="Read timeout of each S3 call of the thumbnail worker, seconds (connect timeout: 5 s).")
    thumb_metrics_port: int = Field(9102, ge=0, le=65535, description="Port of the thumbnail worker's Prometheus /metrics (thumbnail counters, latencies, taskkit's `thumb` queue); 0 turns it off. A port in use is logged and skipped.")
    thumb_metrics_host: str = Field("127.0.0.1", description="Address the thumbnail worker's /metrics binds to (0.0.0.0 to be scraped from other hosts).")

    @field_validator("thumbnails_bucket")
    @classmethod
    def _buckets_differ(cls, v: str, info: Any) -> str:
        if v == info.data.get("uploads_bucket"):
            raise ValueError("must differ from HOTPATH_UPLOADS_BUCKET: a thumbnail written to the uploads bucket would trigger a new upload event")
        return v

    @field_validator("thumb_sizes", mode="before")
    @classmethod
    def _sizes_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [p.strip() for p in v.strip().strip("[]").split(",") if p.strip()]
        return v

    @field_validator("thumb_sizes")
    @classmethod
    def _sizes_valid(cls, v: list[int]) -> list[int]:
        if not v or any(s < 1 or s > 8192 for s in v):
            raise ValueError("expected one or more sizes between 1 and 8192 pixels, e.g. 64,256,1024")
        return sorted(set(v))


class ThumbBackfillSettings(ThumbWorkerSettings, ThumbQueueSettings):
    """`hotpath thumbs backfill`: enqueues the sources whose thumbnails are missing or stale (the worker's buckets and spec)."""


class IndexBackfillSettings(CommonSettings, OriginSettings, IndexQueueSettings):
    """`hotpath index backfill`: enqueues the SQL origin's messages for the index (the intake's queue and limits)."""

    index_text_max_bytes: int = IndexSettings.model_fields["index_text_max_bytes"]


class OpsSettings(CommonSettings):
    """`hotpath queue|retry|dlq`: the operators' CLI."""

    ops_user: str = Field("", description="Who the audit log records for requeue/drop/purge (default: the OS user).")


class SearchSettings(CommonSettings, MilvusSettings, IndexSettings):
    """`hotpath search`: searches the message index from the command line (the same embedder as the worker)."""


class DevSettings(CommonSettings, StorageSettings, MilvusSettings):
    """`hotpath dev`: which parts to start embedded. A part whose URL setting is set (environment or `.env`) is used as is."""

    port: int = Field(8000, ge=1, le=65535, description="Port the API listens on.")
    origin_url: str = Field("", description="See `hotpath api`; unset → a SQLite demo origin under the data dir.")


ALL_SETTINGS: dict[str, type[BaseSettings]] = {
    "api": ApiSettings,
    "worker index": IndexWorkerSettings,
    "worker thumb": ThumbWorkerSettings,
    "thumbs backfill": ThumbBackfillSettings,
    "index backfill": IndexBackfillSettings,
    "queue/retry/dlq": OpsSettings,
    "search": SearchSettings,
    "dev": DevSettings,
}


def describe_settings() -> list[dict[str, Any]]:
    """One row per environment variable: name, default, meaning and the processes that read it."""
    rows: dict[str, dict[str, Any]] = {}
    for proc, cls in ALL_SETTINGS.items():
        for name, field in cls.model_fields.items():
            env = ENV_PREFIX + name.upper()
            if env not in rows:
                default = field.get_default(call_default_factory=True)
                if isinstance(default, dict | list):
                    default = json.dumps(default)
                rows[env] = {"name": env, "default": default, "meaning": field.description or "", "processes": []}
            rows[env]["processes"].append(proc)
    return sorted(rows.values(), key=lambda r: r["name"])


class SettingsError(Exception):
    """A setting has an invalid value; the message names the variable and what it expects."""


def load(cls: type[BaseSettings], **overrides: Any) -> Any:
    """Build a settings object, turning a pydantic ValidationError into one readable message."""
    try:
        return cls(**overrides)
    except _ParseError as exc:
        # pydantic-settings failed to decode a complex (JSON) value before validation.
        m = re.search(r'field "(\w+)"', str(exc))
        var = ENV_PREFIX + (m.group(1).upper() if m else "?")
        raise SettingsError(f"invalid setting {var}: expected a JSON value (object or list), e.g. {var}='{{\"k1\": \"secret\"}}'") from None
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) if err["loc"] else "?"
            var = ENV_PREFIX + str(err["loc"][0]).upper() if err["loc"] else "?"
            msg = err["msg"].removeprefix("Value error, ")
            bad = err.get("input")
            shown = f" (got {bad!r})" if isinstance(bad, str | int | float) else ""
            where = f" (at {field})" if "." in field else ""
            lines.append(f"invalid setting {var}{shown}{where}: {msg}")
        raise SettingsError("; ".join(lines)) from None
