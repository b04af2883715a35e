"""The HTTP edge: `create_app()` builds the Flask app (REST, health, metrics, OpenAPI, WebSockets)."""

from __future__ import annotations

import importlib
import logging
import os
import time
from typing import Any

from flask import Flask, g, request

from app import metrics
from app.config import Settings, get_settings
from app.logging import configure_logging, request_id_var

log = logging.getLogger("api.access")

# Blueprint modules; each exposes `bp`, or `register(app)` when it needs more than a blueprint.
# Every one is required: a door that fails to import stops start-up instead of vanishing.
BLUEPRINTS = ["api.rest.events", "api.rest.incidents", "api.rest.ops", "api.rest.ml", "api.rest.integrations",
              "api.rest.services", "api.rest.correlation", "api.rest.circuit_breakers", "api.rest.slack",
              "api.rest.notifications", "api.rest.escalation", "api.rest.playbooks", "api.ws", "api.graphql"]


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    from api.json_provider import OrjsonProvider

    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes

    from api.errors import register_error_handlers

    register_error_handlers(app)
    for name in BLUEPRINTS:
        module = importlib.import_module(name)
        register = getattr(module, "register", None)
        if register is not None:
            register(app)
        else:
            app.register_blueprint(module.bp)

    @app.before_request
    def _start() -> None:
        req = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup, not five
        ctx = g._get_current_object()  # type: ignore[attr-defined]
        ctx.started = time.perf_counter()
        rid = req.headers.get("X-Request-ID") or os.urandom(16).hex()
        ctx.request_id = rid[:64]
        request_id_var.set(ctx.request_id)
        length = req.content_length
        if length is not None and length > settings.max_body_bytes:
            from api.errors import ApiError

            raise ApiError(413, "payload_too_large", f"request body exceeds {settings.max_body_bytes} bytes",
                           {"max_bytes": settings.max_body_bytes})

    @app.after_request
    def _finish(response: Any) -> Any:
        req = request._get_current_object()  # type: ignore[attr-defined]
        ctx = g._get_current_object()  # type: ignore[attr-defined]
        elapsed = time.perf_counter() - getattr(ctx, "started", time.perf_counter())
        endpoint = req.url_rule.rule if req.url_rule else "unmatched"
        response.headers["X-Request-ID"] = getattr(ctx, "request_id", "")
        metrics.observe_http(req.method, endpoint, response.status_code, elapsed)
        if response.status_code >= 400 or log.isEnabledFor(logging.DEBUG):
            # the query string may carry credentials (`?token=` for browsers): the formatter redacts them
            log.info("request", extra={"method": req.method, "path": req.path,
                                       "query": req.args.to_dict(flat=True),
                                       "status": response.status_code, "duration_ms": round(elapsed * 1000, 2),
                                       "remote_addr": req.remote_addr})
        return response

    return app
