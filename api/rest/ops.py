"""Operations: health (live, ready, full), Prometheus metrics, the OpenAPI document.

As the reference README curls them, `/health/live`, `/health/ready`, `/health` and `/metrics` are
open (CONTRACT decision 13): they show dependency states and counts, never secrets.
`/api/v1/health` (the same body) checks the caller's key, as the integration guide's
troubleshooting uses it; `METRICS_REQUIRE_KEY=true` makes `/metrics` ask for any valid key
(Prometheus sends it as a bearer token)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from api.auth import current_principal
from api.openapi import doc
from app import metrics
from app.config import get_settings
from app.services.health import check_database, full_health, record_queue_stats
from tasks.queue import celery_task_queue

bp = Blueprint("ops", __name__)
log = logging.getLogger(__name__)


@bp.get("/health/live")
@doc("Liveness probe (open)", responses={200: "Alive"})
def live() -> Any:
    return jsonify({"status": "alive"})


@bp.get("/health/ready")
@doc("Readiness probe (open): the database answers", responses={200: "Ready", 503: "Not ready"})
def ready() -> Any:
    database = check_database()
    ok = database["status"] == "up"
    return jsonify({"status": "ready" if ok else "not_ready"}), 200 if ok else 503


def _health() -> Any:
    from api.graphql.hub import hub_health

    ready_ok, body = full_health(celery_task_queue())
    body["graphql_subscriptions"] = hub_health()  # this web process's change-stream fan-out
    return jsonify(body), 200 if ready_ok else 503


@bp.get("/health")
@doc("Dependencies (open): database, broker, workers, beat lag, escalation backlog, each queue's depth",
     responses={200: "Healthy or degraded", 503: "Not ready"})
def health() -> Any:
    return _health()


@bp.get("/api/v1/health")
@doc("The same as /health, for a caller checking its key", permission="any",
     responses={200: "Healthy or degraded", 503: "Not ready"})
def health_with_key() -> Any:
    current_principal()
    return _health()


@bp.get("/metrics")
@doc("Prometheus exposition (open unless METRICS_REQUIRE_KEY)", responses={200: "text/plain; version=0.0.4"})
def prometheus_metrics() -> Any:
    if get_settings().metrics_require_key:
        current_principal()
    try:
        record_queue_stats(celery_task_queue())  # fresh at each scrape; beat's task covers worker hosts
    except Exception:
        log.warning("queue gauges not refreshed: broker unreachable", exc_info=True)
    payload, content_type = metrics.render()
    return Response(payload, content_type=content_type)


@bp.get("/api/v1/openapi.json")
@doc("This OpenAPI document, built from the registered routes and their schemas (open)",
     responses={200: "OpenAPI 3.0"})
def openapi() -> Any:
    from api.openapi import build_spec

    return jsonify(build_spec(current_app))
