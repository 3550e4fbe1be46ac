"""Property-based API fuzzing: schemathesis, driven by /openapi.json, against a live `hotpath api`
(real Redis, SQLite demo origin). No input it generates may produce a 5xx, and every answer must be one the
schema declares: its status code, its content type and its body's schema (the Problem schema for errors)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.services import free_port, wait_port

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture
def live_api(tmp_path, redis_url, key_prefix, milvus_uri):
    from cacheman.auth import mint_token

    origin = f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}"
    subprocess.run([str(BIN / "hotpath"), "origin", "init", "--demo"], check=True, capture_output=True,
                   env=dict(os.environ, HOTPATH_ORIGIN_URL=origin), timeout=120)
    port = free_port()
    secret = "schemathesis-secret-0123456789abcdef"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTPATH_")}
    env.update(
        HOTPATH_REDIS_URL=redis_url,
        HOTPATH_REDIS_PREFIX=key_prefix.rstrip(":"),
        HOTPATH_ORIGIN_URL=origin,
        HOTPATH_PORT=str(port),
        HOTPATH_JWT_KEYS=f'{{"st": "{secret}"}}',
        HOTPATH_LOG_LEVEL="WARNING",
        # The index intake and the search too: jobs under the test's prefix, the hashing embedder, its own collection.
        HOTPATH_TASKKIT_PREFIX=key_prefix,
        HOTPATH_EMBEDDER="hash",
        HOTPATH_MILVUS_URI=milvus_uri,
        HOTPATH_MILVUS_COLLECTION="st_" + key_prefix.split(":")[1],
    )
    proc = subprocess.Popen([str(BIN / "hotpath"), "api"], env=env, cwd=tmp_path, stderr=open(tmp_path / "api.log", "wb"))
    try:
        wait_port("127.0.0.1", port, 60, proc)
        token = mint_token(secret, kid="st", sub="schemathesis", tenants=["*"], scope="cache:read cache:write index:write ops",
                           ttl_s=3600)
        yield f"http://127.0.0.1:{port}", token, tmp_path / "api.log"
    finally:
        proc.terminate()
        proc.wait(15)


def test_every_answer_conforms_to_the_schema_and_none_is_a_server_error(live_api):
    base, token, log = live_api
    spec = httpx.get(f"{base}/openapi.json", timeout=10).json()
    assert any(p.startswith("/v1/") for p in spec["paths"]), "the cache routes must be in the schema"
    proc = subprocess.run(
        [str(BIN / "schemathesis"), "run", f"{base}/openapi.json",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
         "-H", f"Authorization: Bearer {token}",
         # The coverage phase is left out: on CPython 3.11.7 its array generator crashes inside schemathesis
         # ("AST constructor recursion depth mismatch"), a generator bug, not an API response.
         "--phases", "examples,fuzzing,stateful",
         "--max-examples", "40", "--max-time", "60", "--seed", "1234",
         "--request-timeout", "30", "--workers", "2", "--warnings", "off"],
        capture_output=True, text=True, timeout=300, cwd=log.parent,  # its example database stays in tmp
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + "\n--- api log ---\n" + log.read_text()[-3000:]
