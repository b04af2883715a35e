"""One error shape for every door: {"error": {"code", "message", "details"}}; domain errors are
mapped to status codes here and nowhere else."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from app import metrics
from app.adapters.db import DatabaseUnavailable, is_outage
from app.domain.incident import IllegalTransition, IncidentNotFound
from app.services.auth import AuthError, PermissionDenied

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details if details is not None else {}
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None):
    metrics.EVENTS_REJECTED.labels(code=str(status)).inc()
    response = jsonify({"error": {"code": code, "message": message, "details": details if details is not None else {}}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):  # type: ignore[no-untyped-def]
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError):  # type: ignore[no-untyped-def]
        details = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        return error_response(422, "validation_failed", "the request body does not match the schema", details)

    @app.errorhandler(AuthError)
    def _auth(exc: AuthError):  # type: ignore[no-untyped-def]
        return error_response(401, "unauthenticated", str(exc),
                              headers={"WWW-Authenticate": 'ApiKey header="X-API-Key"'})

    @app.errorhandler(PermissionDenied)
    def _forbidden(exc: PermissionDenied):  # type: ignore[no-untyped-def]
        return error_response(403, "forbidden", str(exc))

    @app.errorhandler(IncidentNotFound)
    def _not_found(exc: IncidentNotFound):  # type: ignore[no-untyped-def]
        return error_response(404, "not_found", str(exc), {"incident_id": exc.incident_id})

    @app.errorhandler(IllegalTransition)
    def _conflict(exc: IllegalTransition):  # type: ignore[no-untyped-def]
        return error_response(409, "illegal_transition", str(exc),
                              {"incident_id": exc.incident_id, "status": exc.current, "requested": exc.target})

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):  # type: ignore[no-untyped-def]
        code = {413: "payload_too_large", 404: "not_found", 405: "method_not_allowed", 400: "bad_request"}.get(
            exc.code or 500, (exc.name or "error").lower().replace(" ", "_"))
        message = exc.description or exc.name
        if exc.code == 413:
            from flask import current_app
            message = f"request body exceeds {current_app.config['MAX_CONTENT_LENGTH']} bytes"
        return error_response(exc.code or 500, code, message)

    @app.errorhandler(DatabaseUnavailable)
    def _outage(exc: DatabaseUnavailable):  # type: ignore[no-untyped-def]
        return _unavailable(exc)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        if is_outage(exc):  # e.g. SQLAlchemy could not connect: an outage, not a bug
            return _unavailable(exc)
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; the request id is in the X-Request-ID header")


def _unavailable(exc: Exception):  # type: ignore[no-untyped-def]
    """Postgres unreachable: 503 with Retry-After; nothing of the request was written."""
    retry_after = DatabaseUnavailable.retry_after_secs
    log.warning("database unreachable; answered 503", extra={"error": str(exc)[:200]})
    return error_response(503, "database_unavailable",
                          "the database is unreachable; nothing was stored, send the request again later",
                          {"retry_after_secs": retry_after}, headers={"Retry-After": str(retry_after)})
