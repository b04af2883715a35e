"""Who is calling a gRPC method.

With a client CA configured (GRPC_TLS_CERT/KEY + GRPC_CLIENT_CA) the server requires a client
certificate signed by GRPC_CLIENT_CA at the TLS handshake (no certificate or another CA: the
connection never opens), and a method call is allowed only when the certificate's subject CN or one
of its SANs is in GRPC_ALLOWED_IDENTITIES (PERMISSION_DENIED otherwise). Without certificates the
caller sends `authorization: Bearer <JWT or API key>` (as the guide's grpcurl example does) or
`x-api-key` metadata (UNAUTHENTICATED when missing or invalid, PERMISSION_DENIED when the credential
lacks the method's permission); GRPC_TLS_CERT/KEY alone give TLS with this metadata auth.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import grpc

from app.config import Settings
from app.services.auth import AuthError, Principal, authenticate_api_key, authenticate_bearer
from app.services.ratelimit import limiter

log = logging.getLogger(__name__)

# What an allow-listed certificate may do: everything Shield and operators' tools need.
MTLS_PERMISSIONS = frozenset({"event:create", "incident:read", "incident:write"})


class CallRefused(Exception):
    """The call is refused with a gRPC status (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    raise CallRefused(code, message)


def certificate_identities(context: grpc.ServicerContext) -> list[str]:
    """Subject CN and SANs of the peer's verified certificate (empty without TLS)."""
    auth = context.auth_context() or {}
    identities: list[str] = []
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth.get(key, []):
            text = value.decode() if isinstance(value, bytes) else str(value)
            if text and text not in identities:
                identities.append(text)
    return identities


class GrpcAuthenticator:
    """Turns a call's TLS peer or metadata into a Principal allowed `permission`, or aborts."""

    def __init__(self, settings: Settings) -> None:
        self.mtls = bool(settings.grpc_client_ca)
        self.allowed = frozenset(settings.grpc_allowed_identities)
        self.rate_limit = settings.rate_limit

    def principal(self, context: grpc.ServicerContext, permission: str) -> Principal:
        principal = self._mtls_principal(context) if self.mtls else self._metadata_principal(context)
        if not principal.can(permission):
            _abort(context, grpc.StatusCode.PERMISSION_DENIED, f"this credential lacks the '{permission}' permission")
        if principal.kind != "mtls":
            decision = limiter.check(principal.id, principal.requests_per_minute, principal.burst)
            if not decision.allowed:
                _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"rate limit of {principal.requests_per_minute} requests/minute exceeded; "
                       f"retry after {decision.retry_after_secs} s")
        return principal

    def _mtls_principal(self, context: grpc.ServicerContext) -> Principal:
        identities = certificate_identities(context)
        if not identities:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        for identity in identities:
            if identity in self.allowed:
                return Principal(id=f"mtls:{identity}", name=identity, permissions=MTLS_PERMISSIONS,
                                 requests_per_minute=0, burst=0, kind="mtls")
        log.warning("grpc client certificate not allow-listed", extra={"identities": identities})
        _abort(context, grpc.StatusCode.PERMISSION_DENIED,
               f"client certificate identity {', '.join(identities)} is not in GRPC_ALLOWED_IDENTITIES")

    def _metadata_principal(self, context: grpc.ServicerContext) -> Principal:
        metadata: dict[str, Any] = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
        try:
            if metadata.get("x-api-key"):
                return authenticate_api_key(str(metadata["x-api-key"]))
            scheme, _, value = str(metadata.get("authorization", "")).partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return authenticate_bearer(value.strip())
        except AuthError as exc:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        _abort(context, grpc.StatusCode.UNAUTHENTICATED,
               "missing credentials: send 'authorization: Bearer <JWT or API key>' or 'x-api-key' metadata")
