"""The one way hotpath builds a MinIO/S3 client: `make_minio`, used by `hotpath dev` and the thumbnail worker.

Why: the minio SDK's default urllib3 pool has no connect or read timeout, so a stalled object store hangs
its caller forever; passing our own PoolManager bounds every call (timeouts, and a few retries with backoff).
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

import certifi
import urllib3
from minio import Minio

DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 2


def make_minio(
    endpoint: str,
    access_key: str,
    secret_key: str,
    *,
    secure: bool | None = None,
    region: str | None = None,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    retries: int = DEFAULT_RETRIES,
) -> Minio:
    """A Minio client whose every call is bounded by a connect and a read timeout.

    `endpoint` is a URL (`http://host:9000`) or a bare `host:port`; `secure` defaults to the URL's scheme
    (https → True), and to False for a bare host. Failed connections and 502/503/504 answers are retried
    `retries` times with exponential backoff (0.2 s, 0.4 s, ...)."""
    u = urlparse(endpoint if "://" in endpoint else f"//{endpoint}")
    if not u.netloc:
        raise ValueError(f"expected an S3 endpoint like http://host:9000, got {endpoint!r}")
    if secure is None:
        secure = u.scheme == "https"
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
        retries=urllib3.Retry(total=retries, backoff_factor=0.2, status_forcelist=(502, 503, 504)),
        maxsize=10,
        # the SDK's own default: verify TLS against SSL_CERT_FILE (a private CA) or certifi's bundle
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
    )
    return Minio(u.netloc, access_key=access_key, secret_key=secret_key, secure=secure, region=region, http_client=http)


def minio_from_settings(settings, **kwargs) -> Minio:
    """`make_minio` from StorageSettings (s3_endpoint, s3_access_key, s3_secret_key, s3_region)."""
    return make_minio(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key,
                      region=settings.s3_region, **kwargs)
