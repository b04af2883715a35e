"""API keys (stored as HMAC-SHA256 digests, compared in constant time) and JWTs."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import jwt
from sqlalchemy import select

from app.adapters.db import read_session, unit_of_work
from app.adapters.models import ApiKey
from app.config import Settings, get_settings

PERMISSIONS = ("event:create", "incident:read", "incident:write", "admin")
KEY_PREFIX = "im_"
# A revoked key stops working within this many seconds on every process.
KEY_CACHE_TTL_SECS = 10.0


class AuthError(Exception):
    """No or unknown credentials (401)."""


class PermissionDenied(Exception):
    """Known credentials without the needed permission (403)."""


@dataclass(frozen=True)
class Principal:
    id: str
    name: str
    permissions: frozenset[str]
    requests_per_minute: int
    burst: int
    kind: str = "api_key"  # or "jwt"

    def can(self, permission: str) -> bool:
        return "admin" in self.permissions or permission in self.permissions


@dataclass(frozen=True)
class CreatedKey:
    id: str
    name: str
    key: str
    permissions: tuple[str, ...]


def digest_key(key: str, settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    return hmac.new(settings.api_key_secret, key.encode(), hashlib.sha256).hexdigest()


def create_api_key(
    name: str, permissions: list[str], requests_per_minute: int | None = None, burst: int | None = None
) -> CreatedKey:
    settings = get_settings()
    unknown = sorted(set(permissions) - set(PERMISSIONS))
    if unknown or not permissions:
        raise ValueError(f"unknown permission(s) {unknown}; choose from {', '.join(PERMISSIONS)}")
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key_id = str(uuid.uuid4())
    with unit_of_work() as session:
        session.add(ApiKey(
            id=key_id, name=name, prefix=prefix, digest=digest_key(key, settings),
            permissions=sorted(set(permissions)),
            requests_per_minute=settings.rate_limit.requests_per_minute if requests_per_minute is None
            else requests_per_minute,
            burst=settings.rate_limit.burst if burst is None else burst,
        ))
    return CreatedKey(key_id, name, key, tuple(sorted(set(permissions))))


def list_api_keys() -> list[ApiKey]:
    with read_session() as session:
        return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_api_key(key_id_or_prefix: str) -> bool:
    with unit_of_work() as session:
        row = session.get(ApiKey, key_id_or_prefix) or session.scalars(
            select(ApiKey).where(ApiKey.prefix == key_id_or_prefix)
        ).first()
        if row is None:
            return False
        if row.revoked_at is None:
            row.revoked_at = datetime.now(timezone.utc)
        return True


_cache: dict[str, tuple[float, Principal | None]] = {}
_cache_lock = threading.Lock()


def authenticate_api_key(key: str | None) -> Principal:
    """The principal of a presented key; AuthError if missing, unknown or revoked."""
    if not key:
        raise AuthError("missing API key: send it in the X-API-Key header")
    digest = digest_key(key.strip())
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(digest)
    if hit and hit[0] > now:
        principal = hit[1]
    else:
        with read_session() as session:
            row = session.scalars(select(ApiKey).where(ApiKey.digest == digest)).first()
        principal = None
        if row is not None and row.revoked_at is None and hmac.compare_digest(row.digest, digest):
            principal = Principal(
                id=row.id, name=row.name, permissions=frozenset(row.permissions),
                requests_per_minute=row.requests_per_minute, burst=row.burst,
            )
        with _cache_lock:
            if len(_cache) > 10_000:
                _cache.clear()
            _cache[digest] = (now + KEY_CACHE_TTL_SECS, principal)
    if principal is None:
        raise AuthError("unknown or revoked API key")
    return principal


def clear_key_cache() -> None:
    with _cache_lock:
        _cache.clear()


def create_token(subject: str, ttl_secs: int = 3600, permissions: list[str] | None = None) -> str:
    settings = get_settings()
    now = datetime.now(timezone.utc)
    claims: dict[str, Any] = {
        "sub": subject,
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(seconds=ttl_secs)).timestamp()),
        "permissions": permissions or ["event:create", "incident:read"],
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm=settings.jwt_algorithms[0])


def authenticate_token(token: str | None) -> Principal:
    """Verify a JWT (algorithms pinned, `exp` required)."""
    if not token:
        raise AuthError("missing bearer token")
    settings = get_settings()
    try:
        if settings.jwks_url:
            signing_key = jwt.PyJWKClient(settings.jwks_url).get_signing_key_from_jwt(token).key
        else:
            signing_key = settings.jwt_secret
        claims = jwt.decode(
            token, signing_key, algorithms=list(settings.jwt_algorithms), options={"require": ["exp", "sub"]}
        )
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid token: {exc}") from None
    permissions = claims.get("permissions") or ["event:create", "incident:read"]
    return Principal(
        id=f"jwt:{claims['sub']}", name=str(claims["sub"]), permissions=frozenset(permissions),
        requests_per_minute=settings.rate_limit.requests_per_minute, burst=settings.rate_limit.burst, kind="jwt",
    )


def authenticate_bearer(value: str) -> Principal:
    """`Authorization: Bearer X`: X may be a JWT or an API key (Alertmanager sends keys that way)."""
    if value.startswith(KEY_PREFIX):
        return authenticate_api_key(value)
    return authenticate_token(value)
