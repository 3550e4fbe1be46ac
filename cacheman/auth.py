"""Bearer-JWT authentication, tenant/scope authorisation and the per-tenant rate limit of the cache API.

Keys are chosen by the token's `kid`: HS256 secrets (HOTPATH_JWT_KEYS) and optional RS256 public keys
(HOTPATH_JWT_PUBLIC_KEYS); the algorithm comes from the key, never from the token, so a token cannot
pick a weaker one. Verified tokens are kept in a bounded LRU by their raw string (a changed byte is a
different string) until min(exp, a short TTL), so the hottest path pays one dict lookup, not an HMAC.

Routes say `Depends(require("cache:read"))`; the dependency reads the `{tenant}` path parameter.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import jwt
from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from jwt.algorithms import RSAAlgorithm

from cacheman.errors import ScopeMissing, TenantForbidden, Unauthorized
from cacheman.ratelimit import RateLimiter, limiter_from_settings

__all__ = ["ALL_TENANTS", "SCOPES", "Principal", "TokenVerifier", "Unauthorized", "authorize", "bearer_token", "mint_token",
           "require"]

SCOPES = ("cache:read", "cache:write", "index:write", "ops")
ALL_TENANTS = "*"
_bearer = HTTPBearer(auto_error=False, description="JWT signed with a key from HOTPATH_JWT_KEYS (see `hotpath token`).")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: `sub` (a service), the tenants it may touch (`*` = all) and its scopes."""

    sub: str
    tenants: frozenset[str]
    scopes: frozenset[str]

    def may_access(self, tenant: str) -> bool:
        return ALL_TENANTS in self.tenants or tenant in self.tenants

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def _as_set(value, claim: str, *, split: bool) -> frozenset[str]:
    if isinstance(value, str):
        items: Iterable = value.split() if split else [value]
    elif isinstance(value, list | tuple):
        items = value
    else:
        raise Unauthorized(f"token claim {claim!r} must be a string or a list of strings")
    out = frozenset(items)
    if not all(isinstance(i, str) and i for i in out):
        raise Unauthorized(f"token claim {claim!r} must contain only non-empty strings")
    return out


class TokenVerifier:
    """Verifies bearer tokens against keys by `kid`; caches verified ones (bounded LRU, never past exp)."""

    def __init__(
        self,
        hs256_keys: dict[str, str],
        rs256_public_keys: dict[str, str] | None = None,
        *,
        leeway_s: float = 5.0,
        cache_size: int = 10_000,
        cache_ttl_s: float = 60.0,
    ) -> None:
        self._keys: dict[str, tuple[str, object]] = {kid: ("HS256", secret) for kid, secret in hs256_keys.items()}
        for kid, pem in (rs256_public_keys or {}).items():
            try:
                key = RSAAlgorithm(RSAAlgorithm.SHA256).prepare_key(pem)
            except Exception as exc:  # cryptography raises several types for a bad PEM
                raise ValueError(f"HOTPATH_JWT_PUBLIC_KEYS[{kid!r}] is not an RSA public key in PEM: {exc}") from exc
            self._keys[kid] = ("RS256", key)
        if not self._keys:
            raise ValueError("no JWT keys configured: set HOTPATH_JWT_KEYS (or HOTPATH_JWT_PUBLIC_KEYS)")
        self.leeway_s = leeway_s
        self.cache_size = cache_size
        self.cache_ttl_s = cache_ttl_s
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def verify(self, token: str) -> Principal:
        """The token's Principal, or Unauthorized saying what is wrong with it."""
        now = time.time()
        hit = self._cache.get(token)
        if hit is not None:
            if now < hit[1]:
                self._cache.move_to_end(token)
                return hit[0]
            del self._cache[token]
        principal, exp = self._decode(token)
        self._cache[token] = (principal, min(exp + self.leeway_s, now + self.cache_ttl_s))
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise Unauthorized(f"malformed token: {exc}") from None
        kid = header.get("kid")
        if kid is None:
            if len(self._keys) != 1:
                raise Unauthorized("token has no `kid` header; it must name one of the keys in HOTPATH_JWT_KEYS")
            kid = next(iter(self._keys))
        entry = self._keys.get(kid) if isinstance(kid, str) else None
        if entry is None:
            raise Unauthorized(f"unknown key id (kid) {kid!r}: not in HOTPATH_JWT_KEYS or HOTPATH_JWT_PUBLIC_KEYS")
        alg, key = entry
        if header.get("alg") != alg:
            raise Unauthorized(f"token algorithm {header.get('alg')!r} does not match key {kid!r} ({alg})")
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], leeway=self.leeway_s, options={"require": ["exp", "sub"]}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token lacks the required {exc.claim!r} claim") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token is not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized(f"token signature does not verify with key {kid!r}") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("token claim 'sub' must be a non-empty string")
        if "tenants" not in claims:
            raise Unauthorized("token lacks the required 'tenants' claim (a list of tenants, or \"*\")")
        tenants = _as_set(claims["tenants"], "tenants", split=False)
        scopes = _as_set(claims.get("scope", ""), "scope", split=True)
        return Principal(sub=sub, tenants=tenants, scopes=scopes), float(claims["exp"])


def mint_token(
    secret: str,
    *,
    kid: str,
    sub: str,
    tenants: list[str] | str,
    scope: str | list[str],
    ttl_s: int = 3600,
    algorithm: str = "HS256",
) -> str:
    """A signed token (HS256 with a secret, or RS256 with a private key PEM) carrying sub/tenants/scope/exp."""
    now = int(time.time())
    if isinstance(tenants, list | tuple) and list(tenants) == [ALL_TENANTS]:
        tenants = ALL_TENANTS
    claims = {
        "sub": sub,
        "tenants": tenants if isinstance(tenants, str) else list(tenants),
        "scope": scope if isinstance(scope, str) else " ".join(scope),
        "iat": now,
        "exp": now + int(ttl_s),
    }
    return jwt.encode(claims, secret, algorithm=algorithm, headers={"kid": kid})


def get_verifier(app) -> TokenVerifier:
    """The app's verifier, built once from app.state.settings (jwt_keys, jwt_public_keys)."""
    verifier = getattr(app.state, "token_verifier", None)
    if verifier is None:
        settings = app.state.settings
        verifier = TokenVerifier(settings.jwt_keys, settings.jwt_public_keys)
        app.state.token_verifier = verifier
    return verifier


def get_limiter(app) -> RateLimiter:
    """The app's rate limiter, built once from app.state.redis and app.state.settings."""
    limiter = getattr(app.state, "rate_limiter", None)
    if limiter is None:
        limiter = limiter_from_settings(app.state.redis, app.state.settings)
        app.state.rate_limiter = limiter
    return limiter


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, as HTTPBearer(auto_error=False) reads it."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if not (scheme and token) or scheme.lower() != "bearer":
        return None
    return token


async def authorize(app, scope: str, token: str | None, authorization: str | None, tenant: str | None) -> Principal:
    """Every check of `require(scope)`: the bearer `token` (None: the raw `authorization` header said why not),
    its scope, the tenant and the tenant's rate limit. Raises the 401 / 403 / 429 problems; returns the Principal."""
    if token is None:
        if authorization:
            raise Unauthorized("Authorization header must be `Bearer <token>`")
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)", missing=True)
    principal = get_verifier(app).verify(token)
    if scope not in principal.scopes:
        raise ScopeMissing(f"token of {principal.sub!r} lacks scope {scope!r}; mint one with it (`hotpath token`)",
                           scope=scope)
    if tenant is not None:
        if not principal.may_access(tenant):
            raise TenantForbidden(f"token of {principal.sub!r} may not access tenant {tenant!r}; its `tenants` claim "
                                  "must list it (or be \"*\")", tenant=tenant)
        await get_limiter(app).acquire(tenant)
    return principal


def require(scope: str):
    """FastAPI dependency factory: authenticate, check `scope` and the `{tenant}` path parameter, rate-limit.

    Returns the Principal. 401 no/bad/expired token; 403 wrong tenant or missing scope; 429 over the
    tenant's rate limit (only for callers that passed authorisation, so strangers cannot drain a bucket).
    The checks are `authorize()`, which the pure-ASGI membership fast path (cacheman/routes.py) calls too.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; expected one of {', '.join(SCOPES)}")

    async def dependency(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_bearer)
    ) -> Principal:
        if credentials is None:
            return await authorize(request.app, scope, None, request.headers.get("authorization"), None)
        return await authorize(request.app, scope, credentials.credentials, None, request.path_params.get("tenant"))

    dependency.__name__ = f"require_{scope.replace(':', '_')}"
    dependency.scope = scope  # type: ignore[attr-defined]
    return dependency
