"""Authentication and permission checks for the HTTP doors."""

from __future__ import annotations

from functools import wraps
from typing import Any, Callable, TypeVar

from flask import g, request

from api.errors import ApiError
from app import metrics
from app.services.auth import (
    AuthError,
    PermissionDenied,
    Principal,
    authenticate_api_key,
    authenticate_bearer,
)
from app.services.ratelimit import limiter

F = TypeVar("F", bound=Callable[..., Any])


def current_principal() -> Principal:
    """Authenticate the request from `X-API-Key` or `Authorization: Bearer` (API key or JWT)."""
    cached = g.get("principal")
    if cached is not None:
        return cached
    key = request.headers.get("X-API-Key")
    if key:
        principal = authenticate_api_key(key)
    else:
        authorization = request.headers.get("Authorization", "")
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            principal = authenticate_bearer(value.strip())
        else:
            raise AuthError("missing credentials: send an API key in X-API-Key (or Authorization: Bearer)")
    g.principal = principal
    return principal


def enforce(principal: Principal, permission: str) -> None:
    if not principal.can(permission):
        raise PermissionDenied(f"this credential lacks the '{permission}' permission")
    throttle(principal)


def throttle(principal: Principal) -> None:
    """Count one request against the credential's rate limit; 429 beyond it."""
    decision = limiter.check(principal.id, principal.requests_per_minute, principal.burst)
    if not decision.allowed:
        metrics.RATE_LIMITED.labels(key=principal.name).inc()
        raise ApiError(429, "rate_limited",
                       f"rate limit of {principal.requests_per_minute} requests/minute "
                       f"(burst {principal.burst}) exceeded",
                       {"retry_after_secs": decision.retry_after_secs},
                       headers={"Retry-After": str(decision.retry_after_secs)})


def require(permission: str) -> Callable[[F], F]:
    """Decorator: the request must carry a credential with `permission` and be within its rate."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            enforce(current_principal(), permission)
            return view(*args, **kwargs)

        wrapper.permission = permission  # type: ignore[attr-defined]  # the OpenAPI document reads it
        return wrapper  # type: ignore[return-value]

    return decorate
