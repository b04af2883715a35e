"""Circuit breakers over REST, as the reference README curls them: `GET /v1/circuit-breakers[/{name}]`
(any valid credential, like /health) and `POST /v1/circuit-breakers/{name}/open|close|reset` (admin)."""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint, jsonify

from api.auth import current_principal, require
from api.errors import ApiError, error_response
from api.openapi import doc
from app.services import circuit_breakers as service

bp = Blueprint("circuit_breakers", __name__)


@bp.get("/v1/circuit-breakers")
@doc("Every circuit breaker: state, counters, configuration", permission="any",
     responses={200: "{items, next_cursor}"})
def list_breakers() -> Any:
    current_principal()
    return jsonify({"items": service.list_breakers(), "next_cursor": None})


@bp.get("/v1/circuit-breakers/<name>")
@doc("One circuit breaker", permission="any", responses={200: "The breaker", 404: ""})
def get_breaker(name: str) -> Any:
    current_principal()
    return jsonify(service.info(name))


_ACTIONS = {"open": service.force_open, "close": service.force_close, "reset": service.reset}


@bp.post("/v1/circuit-breakers/<name>/<action>")
@require("admin")
@doc("open: force open (maintenance), calls fail fast until closed or reset; close: force closed, "
     "counters kept; reset: a fresh closed breaker, counters cleared",
     responses={200: "The breaker after the change", 404: "Unknown breaker or action"})
def control(name: str, action: str) -> Any:
    change = _ACTIONS.get(action)
    if change is None:
        raise ApiError(404, "not_found", f"unknown action {action!r}: use open, close or reset",
                       {"actions": sorted(_ACTIONS)})
    return jsonify(change(name, actor=f"api:{current_principal().name}"))


@bp.errorhandler(service.UnknownBreaker)
def _unknown(exc: service.UnknownBreaker) -> Any:
    return error_response(404, "not_found", str(exc), {"name": exc.name, "known": exc.known})


@bp.errorhandler(redis.RedisError)
def _redis_down(exc: redis.RedisError) -> Any:
    return error_response(503, "unavailable", "the circuit breakers' shared state (Redis) is unreachable",
                          {"reason": type(exc).__name__})
