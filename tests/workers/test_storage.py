"""thumb_worker/storage.py: the MinIO client factory talks to a real S3 server, and a server that accepts
but never answers fails the call within the read timeout (after the bounded retries) instead of hanging."""

from __future__ import annotations

import socket
import threading
import time
import uuid

import pytest
import urllib3

from thumb_worker.storage import make_minio


def test_make_minio_speaks_to_a_real_s3_server(s3_endpoint):
    client = make_minio(s3_endpoint, "minioadmin", "minioadmin")
    bucket = f"hptest-{uuid.uuid4().hex[:12]}"
    assert not client.bucket_exists(bucket)
    client.make_bucket(bucket)
    try:
        assert client.bucket_exists(bucket)
    finally:
        client.remove_bucket(bucket)


def test_a_silent_server_times_out_after_bounded_retries():
    accepted: list[socket.socket] = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()

    def accept_and_say_nothing() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            accepted.append(conn)

    t = threading.Thread(target=accept_and_say_nothing, daemon=True)
    t.start()
    try:
        port = srv.getsockname()[1]
        client = make_minio(f"http://127.0.0.1:{port}", "k", "s", region="us-east-1",
                            connect_timeout_s=1, read_timeout_s=0.5, retries=1)
        start = time.monotonic()
        with pytest.raises(urllib3.exceptions.MaxRetryError):
            client.bucket_exists("any")
        elapsed = time.monotonic() - start
        # two attempts of 0.5 s each plus one 0.2 s backoff at most; the SDK's default would wait 5 minutes
        assert 0.9 <= elapsed < 5, elapsed
        assert len(accepted) == 2, "retries=1 means exactly one retry"
    finally:
        stop.set()
        t.join(2)
        for c in accepted:
            c.close()
        srv.close()


def test_endpoint_forms():
    assert make_minio("https://s3.example:9000", "k", "s")._base_url.is_https
    assert not make_minio("http://s3.example:9000", "k", "s")._base_url.is_https
    assert not make_minio("s3.example:9000", "k", "s")._base_url.is_https
    with pytest.raises(ValueError, match="expected an S3 endpoint"):
        make_minio("http://", "k", "s")
