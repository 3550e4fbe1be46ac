"""CacheConfig: the cache's policy (TTLs, leases, bypass, Redis retry), one typed value built from the settings.

Built once at the edge (`from_settings`) and passed in: library code never reads the environment, and
each field is read by name, so a renamed setting fails at startup instead of becoming a silent default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hotpath.settings import ApiSettings


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Cache policy; each field's meaning is the description of its `HOTPATH_*` setting in hotpath/settings.py."""

    prefix: str = "hp"  # HOTPATH_REDIS_PREFIX
    ttl_s: float = 300.0  # HOTPATH_CACHE_TTL_S
    ttl_jitter: float = 0.1  # HOTPATH_CACHE_TTL_JITTER
    negative_ttl_s: float = 5.0  # HOTPATH_CACHE_NEGATIVE_TTL_S
    stale_ttl_s: float = 3600.0  # HOTPATH_CACHE_STALE_TTL_S
    lease_ttl_ms: int = 3000  # HOTPATH_CACHE_LEASE_TTL_MS
    lease_wait_s: float = 2.0  # HOTPATH_CACHE_LEASE_WAIT_S
    bypass_concurrency: int = 32  # HOTPATH_CACHE_BYPASS_CONCURRENCY
    bypass_wait_s: float = 1.0  # HOTPATH_CACHE_BYPASS_WAIT_S
    redis_retry_s: float = 1.0  # HOTPATH_CACHE_REDIS_RETRY_S

    @classmethod
    def from_settings(cls, s: ApiSettings) -> CacheConfig:
        """The cache policy of an API process (attribute access only: a missing setting is an error)."""
        return cls(
            prefix=s.redis_prefix, ttl_s=s.cache_ttl_s, ttl_jitter=s.cache_ttl_jitter,
            negative_ttl_s=s.cache_negative_ttl_s, stale_ttl_s=s.cache_stale_ttl_s,
            lease_ttl_ms=s.cache_lease_ttl_ms, lease_wait_s=s.cache_lease_wait_s,
            bypass_concurrency=s.cache_bypass_concurrency, bypass_wait_s=s.cache_bypass_wait_s,
            redis_retry_s=s.cache_redis_retry_s,
        )

    @property
    def floor_px(self) -> int:
        """Version floors (and room seqs) live as long as anything they guard."""
        return int((self.ttl_s * (1 + self.ttl_jitter) + self.stale_ttl_s) * 1000) + 60_000
