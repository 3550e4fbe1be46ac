"""Bearer-JWT auth through a tiny real FastAPI app: 401s, 403s, key rotation by kid, RS256, the verified-token cache."""

from __future__ import annotations

import asyncio
import time

import httpx
import jwt
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import Depends, FastAPI

from cacheman import problems
from cacheman.auth import Principal, TokenVerifier, Unauthorized, mint_token, require
from hotpath.settings import ApiSettings

K1 = "k1-secret-0123456789-0123456789-0123456789"
K2 = "k2-secret-9876543210-9876543210-9876543210"


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return private, public


def build_app(settings: ApiSettings, redis_client) -> FastAPI:
    app = FastAPI()
    problems.install(app)
    app.state.settings = settings
    app.state.redis = redis_client

    @app.get("/v1/{tenant}/x")
    async def read_x(tenant: str, principal: Principal = Depends(require("cache:read"))):
        return {"tenant": tenant, "sub": principal.sub}

    @app.post("/v1/{tenant}/x")
    async def write_x(tenant: str, principal: Principal = Depends(require("cache:write"))):
        return {"tenant": tenant, "sub": principal.sub}

    return app


@pytest.fixture
async def client(redis_url, key_prefix, rsa_keys):
    settings = ApiSettings(
        jwt_keys={"k1": K1, "k2": K2},
        jwt_public_keys={"r1": rsa_keys[1]},
        redis_prefix=key_prefix.rstrip(":"),
        rate_limit_per_s=10000,
        rate_limit_burst=10000,
    )
    r = aioredis.Redis.from_url(redis_url)
    app = build_app(settings, r)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        c.app = app
        yield c
    await r.aclose()


def tok(secret=K1, kid="k1", tenants=("acme",), scope="cache:read", ttl_s=60, **kw) -> str:
    return mint_token(secret, kid=kid, sub="chat", tenants=list(tenants), scope=scope, ttl_s=ttl_s, **kw)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_valid_token_reaches_the_route(client):
    r = await client.get("/v1/acme/x", headers=bearer(tok()))
    assert r.status_code == 200, r.text
    assert r.json() == {"tenant": "acme", "sub": "chat"}


async def test_no_token_is_401_with_challenge(client):
    r = await client.get("/v1/acme/x")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="hotpath"'
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert (body["type"], body["title"], body["status"], body["instance"]) == (
        "urn:hotpath:error:unauthorized", "Unauthorized", 401, "/v1/acme/x")
    assert "missing bearer token" in body["detail"]


async def test_non_bearer_scheme_is_401(client):
    r = await client.get("/v1/acme/x", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401
    assert r.json()["type"] == "urn:hotpath:error:unauthorized" and "Bearer" in r.json()["detail"]


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: "not-a-jwt", "malformed"),
        (lambda: tok(secret="wrong-secret-0123456789-0123456789-0123"), "signature"),
        (lambda: tok(ttl_s=-120), "expired"),
        (lambda: tok(kid="k9"), "unknown key id"),
        (lambda: jwt.encode({"sub": "s", "tenants": ["acme"], "scope": "cache:read"}, K1, headers={"kid": "k1"}), "'exp'"),
        (lambda: jwt.encode({"sub": "s", "scope": "cache:read", "exp": int(time.time()) + 60}, K1, headers={"kid": "k1"}), "tenants"),
        (lambda: tok()[:-3] + "AAA", "signature"),
    ],
    ids=["garbage", "bad-signature", "expired", "unknown-kid", "no-exp", "no-tenants", "tampered"],
)
async def test_bad_tokens_are_401_saying_why(client, make, words):
    r = await client.get("/v1/acme/x", headers=bearer(make()))
    assert r.status_code == 401, r.text
    assert r.json()["type"] == "urn:hotpath:error:unauthorized" and words in r.json()["detail"]
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


async def test_wrong_tenant_is_403_and_never_reads_the_other_tenant(client):
    t = tok(tenants=("acme",))
    r = await client.get("/v1/globex/x", headers=bearer(t))
    assert r.status_code == 403
    body = r.json()
    assert (body["type"], body["status"], body["tenant"]) == ("urn:hotpath:error:tenant-forbidden", 403, "globex")
    assert "globex" in body["detail"]
    assert (await client.get("/v1/acme/x", headers=bearer(t))).status_code == 200


async def test_missing_scope_is_403(client):
    t = tok(scope="cache:read")
    r = await client.post("/v1/acme/x", headers=bearer(t))
    assert r.status_code == 403
    body = r.json()
    assert (body["type"], body["scope"]) == ("urn:hotpath:error:scope-missing", "cache:write")
    assert "cache:write" in body["detail"]
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    both = tok(scope=["cache:read", "cache:write"])
    assert (await client.post("/v1/acme/x", headers=bearer(both))).status_code == 200


async def test_star_tenant_token_reaches_every_tenant(client):
    t = tok(tenants=("*",), scope="cache:read ops")
    for tenant in ("acme", "globex", "t-123"):
        assert (await client.get(f"/v1/{tenant}/x", headers=bearer(t))).status_code == 200


async def test_key_rotation_both_kids_accepted_and_retired_key_rejected(client, redis_url, key_prefix):
    old, new = tok(secret=K1, kid="k1"), tok(secret=K2, kid="k2")
    assert (await client.get("/v1/acme/x", headers=bearer(old))).status_code == 200
    assert (await client.get("/v1/acme/x", headers=bearer(new))).status_code == 200
    # A key signed with k2's secret but claiming kid k1 does not verify.
    assert (await client.get("/v1/acme/x", headers=bearer(tok(secret=K2, kid="k1")))).status_code == 401
    # Retire k1: the old token stops working, the new one keeps working.
    settings = ApiSettings(jwt_keys={"k2": K2}, redis_prefix=key_prefix.rstrip(":"))
    r = aioredis.Redis.from_url(redis_url)
    try:
        app = build_app(settings, r)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c2:
            assert (await c2.get("/v1/acme/x", headers=bearer(old))).status_code == 401
            assert (await c2.get("/v1/acme/x", headers=bearer(new))).status_code == 200
    finally:
        await r.aclose()


async def test_rs256_public_key(client, rsa_keys):
    private, _ = rsa_keys
    t = mint_token(private, kid="r1", sub="svc", tenants=["acme"], scope="cache:read", ttl_s=60, algorithm="RS256")
    r = await client.get("/v1/acme/x", headers=bearer(t))
    assert r.status_code == 200, r.text
    assert r.json()["sub"] == "svc"


async def test_algorithm_confusion_is_rejected(client, rsa_keys):
    # The classic attack: an HS256 token "signed" with the RSA public key, naming the RS256 kid.
    _, public = rsa_keys
    forged = jwt.api_jws.PyJWS(algorithms=["HS256"])
    forged._algorithms["HS256"].prepare_key = lambda k: k.encode() if isinstance(k, str) else k
    payload = b'{"sub":"evil","tenants":"*","scope":"cache:read","exp":%d}' % (int(time.time()) + 60)
    t = forged.encode(payload, public, algorithm="HS256", headers={"kid": "r1"})
    r = await client.get("/v1/acme/x", headers=bearer(t))
    assert r.status_code == 401
    assert "does not match key" in r.json()["detail"]


async def test_cached_token_still_expires():
    v = TokenVerifier({"k1": K1}, leeway_s=0, cache_ttl_s=60)
    t = tok(ttl_s=1)
    assert v.verify(t).sub == "chat"
    assert v.verify(t).sub == "chat"  # served from the cache
    await asyncio.sleep(1.3)
    with pytest.raises(Unauthorized):
        v.verify(t)


def test_cache_is_bounded():
    v = TokenVerifier({"k1": K1}, cache_size=10)
    for i in range(50):
        v.verify(mint_token(K1, kid="k1", sub=f"s{i}", tenants=["a"], scope="cache:read", ttl_s=60))
    assert len(v._cache) == 10


def test_unknown_scope_in_require_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown scope"):
        require("cache:everything")


def test_bad_public_key_names_the_setting():
    with pytest.raises(ValueError, match="HOTPATH_JWT_PUBLIC_KEYS"):
        TokenVerifier({}, {"r1": "not a pem"})
