"""ThumbConfig: everything the thumbnail worker's jobs need (buckets, limits, thumbnail spec), one typed
value built from the settings at the edge.

Why one value: library code never reads the environment, and each field is read by name in
`from_settings`, so a renamed setting fails at start-up instead of becoming a silent default.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from thumb_worker.spec import CONTENT_TYPES, ThumbSpec

if TYPE_CHECKING:
    from hotpath.settings import ThumbWorkerSettings


@dataclass(frozen=True, slots=True)
class ThumbConfig:
    """The thumbnail worker's policy; each field's meaning is its `HOTPATH_*` setting's description."""

    uploads_bucket: str = "uploads"  # HOTPATH_UPLOADS_BUCKET
    thumbnails_bucket: str = "thumbnails"  # HOTPATH_THUMBNAILS_BUCKET
    spec: ThumbSpec = field(default_factory=ThumbSpec)  # HOTPATH_THUMB_SIZES / _FORMAT / _QUALITY / _MAX_PIXELS
    max_bytes: int = 25_000_000  # HOTPATH_THUMB_MAX_BYTES
    time_limit_s: float = 30.0  # HOTPATH_THUMB_TIME_LIMIT_S
    s3_timeout_s: float = 10.0  # HOTPATH_THUMB_S3_TIMEOUT_S
    concurrency: int = 4  # HOTPATH_THUMB_CONCURRENCY
    tmp_dir: str | None = None  # where sources are spooled while decoded (None: the system's temp dir)
    metrics_host: str = "127.0.0.1"  # HOTPATH_THUMB_METRICS_HOST
    metrics_port: int = 0  # HOTPATH_THUMB_METRICS_PORT (0: not served)

    def __post_init__(self) -> None:
        if self.uploads_bucket == self.thumbnails_bucket:
            raise ValueError(f"HOTPATH_UPLOADS_BUCKET and HOTPATH_THUMBNAILS_BUCKET are both {self.uploads_bucket!r}: "
                             "thumbnails must go to another bucket, or each one would trigger a new upload event")
        if self.max_bytes < 1 or self.time_limit_s <= 0 or self.s3_timeout_s <= 0 or self.concurrency < 1:
            raise ValueError("max_bytes, time_limit_s, s3_timeout_s and concurrency must be positive")

    @classmethod
    def from_settings(cls, s: ThumbWorkerSettings) -> ThumbConfig:
        """The policy of a thumbnail worker process (attribute access only: a missing setting is an error)."""
        spec = ThumbSpec(sizes=tuple(s.thumb_sizes), format=s.thumb_format, quality=s.thumb_quality,
                         max_pixels=s.thumb_max_pixels)
        return cls(uploads_bucket=s.uploads_bucket, thumbnails_bucket=s.thumbnails_bucket, spec=spec,
                   max_bytes=s.thumb_max_bytes, time_limit_s=s.thumb_time_limit_s, s3_timeout_s=s.thumb_s3_timeout_s,
                   concurrency=s.thumb_concurrency, metrics_host=s.thumb_metrics_host,
                   metrics_port=s.thumb_metrics_port)

    @property
    def settings_hash(self) -> str:
        """A hash of what shapes the thumbnails (sizes, format, quality): stored with each, compared on replay."""
        shape = {"sizes": sorted(self.spec.sizes), "format": self.spec.format, "quality": self.spec.quality}
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]

    def thumb_key(self, key: str, size: int) -> str:
        """The thumbnails-bucket key of one size of source `key`: `{key}/{size}.{ext}`."""
        return f"{key}/{size}.{self.spec.ext}"

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.spec.format]
