"""Correlation over REST: `GET /api/v1/incidents/{id}/related`, `GET /api/v1/correlation-groups[/{id}]`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from api.auth import require
from api.errors import ApiError
from api.openapi import Operation, operation
from app.services import correlation as service
from app.services.incidents import InvalidCursor

bp = Blueprint("correlation", __name__)

for _op in [
    Operation("/api/v1/incidents/{incident_id}/related", "get",
              "The incident's correlation group (members, scores, reasons) and similar past incidents",
              "incident:read", responses=((200, "{incident_id, correlation_group, related, similar_incidents}"),
                                          (401, ""), (403, ""), (404, "")),
              parameters=({"name": "incident_id", "in": "path", "required": True, "schema": {"type": "string"}},)),
    Operation("/api/v1/correlation-groups", "get", "Correlation groups, newest first", "incident:read",
              responses=((200, "{items, next_cursor}"), (401, ""), (403, ""), (422, "")),
              parameters=({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                          {"name": "cursor", "in": "query", "schema": {"type": "string"}})),
    Operation("/api/v1/correlation-groups/{group_id}", "get", "One group with its members", "incident:read",
              responses=((200, "The group"), (401, ""), (403, ""), (404, "")),
              parameters=({"name": "group_id", "in": "path", "required": True, "schema": {"type": "string"}},)),
]:
    operation(_op)


@bp.get("/api/v1/incidents/<incident_id>/related")
@require("incident:read")
def related(incident_id: str) -> Any:
    return jsonify(service.related_incidents(incident_id))


@bp.get("/api/v1/correlation-groups")
@require("incident:read")
def list_groups() -> Any:
    limit = request.args.get("limit", "50")
    if not limit.isdigit() or not 1 <= int(limit) <= 500:
        raise ApiError(422, "validation_failed", "limit must be 1..500", {"limit": ["must be between 1 and 500"]})
    try:
        items, next_cursor = service.list_groups(int(limit), request.args.get("cursor") or None)
    except InvalidCursor as exc:
        raise ApiError(422, "validation_failed", str(exc), {"cursor": [str(exc)]}) from None
    return jsonify({"items": items, "next_cursor": next_cursor})


@bp.get("/api/v1/correlation-groups/<group_id>")
@require("incident:read")
def get_group(group_id: str) -> Any:
    try:
        return jsonify(service.get_group(group_id))
    except service.GroupNotFound as exc:
        raise ApiError(404, "not_found", str(exc), {"group_id": exc.group_id}) from None
