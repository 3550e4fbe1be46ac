"""CacheConfig is built from the API settings field by field: every policy field comes from its setting."""

from __future__ import annotations

import dataclasses

from cacheman.config import CacheConfig
from hotpath.settings import ApiSettings

SETTING_OF = {
    "prefix": "redis_prefix", "ttl_s": "cache_ttl_s", "ttl_jitter": "cache_ttl_jitter",
    "negative_ttl_s": "cache_negative_ttl_s", "stale_ttl_s": "cache_stale_ttl_s",
    "lease_ttl_ms": "cache_lease_ttl_ms", "lease_wait_s": "cache_lease_wait_s",
    "bypass_concurrency": "cache_bypass_concurrency", "bypass_wait_s": "cache_bypass_wait_s",
    "redis_retry_s": "cache_redis_retry_s",
}
NON_DEFAULT = {
    "redis_prefix": "hp-x", "cache_ttl_s": 12.5, "cache_ttl_jitter": 0.3, "cache_negative_ttl_s": 0.7,
    "cache_stale_ttl_s": 99.0, "cache_lease_ttl_ms": 1234, "cache_lease_wait_s": 0.9,
    "cache_bypass_concurrency": 7, "cache_bypass_wait_s": 0.2, "cache_redis_retry_s": 3.5,
}


def test_every_cache_policy_field_comes_from_its_setting():
    assert set(SETTING_OF) == {f.name for f in dataclasses.fields(CacheConfig)}, "a CacheConfig field has no setting here"
    cfg = CacheConfig.from_settings(ApiSettings(_env_file=None, jwt_keys={"k": "x" * 32}, **NON_DEFAULT))
    for field, setting in SETTING_OF.items():
        assert getattr(cfg, field) == NON_DEFAULT[setting], field
        assert getattr(cfg, field) != getattr(CacheConfig(), field), f"{field}: the test value is the default"


def test_the_defaults_match_the_settings_defaults():
    # Tests build CacheConfig() directly: its defaults must be the ones a process without settings gets.
    assert CacheConfig.from_settings(ApiSettings(_env_file=None, jwt_keys={"k": "x" * 32})) == CacheConfig()
