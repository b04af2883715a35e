"""Correlation over REST: `GET /api/v1/incidents/{id}/related`, `GET /api/v1/correlation-groups[/{id}]`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from api.auth import require
from api.errors import ApiError
from api.openapi import doc
from api.schemas import PageQuerySchema
from app.services import correlation as service
from app.services.incidents import InvalidCursor

bp = Blueprint("correlation", __name__)


@bp.get("/api/v1/incidents/<incident_id>/related")
@require("incident:read")
@doc("The incident's correlation group (members, scores, reasons) and similar past incidents",
     responses={200: "{incident_id, correlation_group, related, similar_incidents}"})
def related(incident_id: str) -> Any:
    return jsonify(service.related_incidents(incident_id))


@bp.get("/api/v1/correlation-groups")
@require("incident:read")
@doc("Correlation groups, newest first", query=PageQuerySchema, responses={200: "{items, next_cursor}"})
def list_groups() -> Any:
    page = PageQuerySchema().load(request.args)  # ValidationError -> 422 with per-field errors
    try:
        items, next_cursor = service.list_groups(page.get("limit", 50), page.get("cursor"))
    except InvalidCursor as exc:
        raise ApiError(422, "validation_failed", str(exc), {"cursor": [str(exc)]}) from None
    return jsonify({"items": items, "next_cursor": next_cursor})


@bp.get("/api/v1/correlation-groups/<group_id>")
@require("incident:read")
@doc("One group with its members", responses={200: "The group", 404: ""})
def get_group(group_id: str) -> Any:
    try:
        return jsonify(service.get_group(group_id))
    except service.GroupNotFound as exc:
        raise ApiError(404, "not_found", str(exc), {"group_id": exc.group_id}) from None
