"""Operations: health (live, ready, full), Prometheus metrics, the OpenAPI document.

`/health/live` and `/health/ready` are open (probes; they reveal only up/down); `/health`,
`/api/v1/health` and `/metrics` need any valid credential (Prometheus sends it as a bearer token)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from api.auth import current_principal
from app import metrics
from app.services.health import check_database, full_health

bp = Blueprint("ops", __name__)


@bp.get("/health/live")
def live() -> Any:
    return jsonify({"status": "alive"})


@bp.get("/health/ready")
def ready() -> Any:
    database = check_database()
    ok = database["status"] == "up"
    return jsonify({"status": "ready" if ok else "not_ready"}), 200 if ok else 503


@bp.get("/health")
@bp.get("/api/v1/health")
def health() -> Any:
    current_principal()
    ready_ok, body = full_health()
    return jsonify(body), 200 if ready_ok else 503


@bp.get("/metrics")
def prometheus_metrics() -> Any:
    current_principal()
    payload, content_type = metrics.render()
    return Response(payload, content_type=content_type)


@bp.get("/api/v1/openapi.json")
def openapi() -> Any:
    from api.openapi import build_spec

    return jsonify(build_spec())
