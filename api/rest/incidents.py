"""Incidents over REST: list, get, manual create, patch, acknowledge, resolve, close, timeline, events."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from api.auth import current_principal, require
from api.body import json_object
from api.errors import ApiError
from api.openapi import doc
from api.schemas import (
    AcknowledgeSchema,
    CloseSchema,
    ListQuerySchema,
    ManualIncidentSchema,
    PatchIncidentSchema,
    ResolveSchema,
)
from app.services import incidents as service
from tasks.dispatch import dispatch_pipeline_in_background as dispatch_pipeline

bp = Blueprint("incidents", __name__)

LIST_QUERY = ListQuerySchema()


def _actor(explicit: str | None) -> str:
    return explicit or current_principal().name


def _multi(name: str) -> list[str]:
    """`?status=NEW&status=ACKNOWLEDGED` and `?status=NEW,ACKNOWLEDGED` both work."""
    values: list[str] = []
    for raw in request.args.getlist(name):
        values.extend(v.strip() for v in raw.split(",") if v.strip())
    return values


@bp.get("/api/v1/incidents")
@require("incident:read")
@doc("List incidents (filters, cursor pagination)", query=ListQuerySchema,
     responses={200: "{items, next_cursor}"})
def list_incidents() -> Any:
    args: dict[str, Any] = {k: v for k, v in request.args.items()}
    for name in ("status", "severity", "source", "category", "team"):
        if name in request.args:
            args[name] = _multi(name)
    query = LIST_QUERY.load(args)
    flt = service.IncidentFilter(
        status=query.get("status", ()), severity=query.get("severity", ()), source=query.get("source", ()),
        category=query.get("category", ()), team=query.get("team", ()), created_after=query.get("created_after"),
        created_before=query.get("created_before"), q=query.get("q"),
    )
    try:
        items, next_cursor = service.list_incidents(flt, limit=query["limit"], cursor=query.get("cursor"))
    except service.InvalidCursor as exc:
        raise ApiError(422, "validation_failed", str(exc), {"cursor": [str(exc)]}) from None
    return jsonify({"items": items, "next_cursor": next_cursor})


@bp.post("/api/v1/incidents")
@require("incident:write")
@doc("Create an incident by hand", body=ManualIncidentSchema,
     responses={201: "Created", 200: "Joined an active incident with the same fingerprint"})
def create_incident() -> Any:
    body = json_object()
    data = ManualIncidentSchema().load(body)
    event = service.manual_event(data, body, requested_by=_actor(None))
    incident, created = service.create_manual(event, dispatcher=dispatch_pipeline)
    response = jsonify(incident)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/api/v1/incidents/{incident['id']}"
    return response


@bp.get("/api/v1/incidents/<incident_id>")
@bp.get("/incidents/<incident_id>")
@require("incident:read")
@doc("Get an incident (follows merged_into)", responses={200: "The incident"})
def get_incident(incident_id: str) -> Any:
    return jsonify(service.get_incident(incident_id))


@bp.patch("/api/v1/incidents/<incident_id>")
@require("incident:write")
@doc("Assign, change severity/status/tags/team/title/description", body=PatchIncidentSchema,
     responses={200: "The incident", 409: ""})
def patch_incident(incident_id: str) -> Any:
    data = PatchIncidentSchema().load(json_object())
    actor = _actor(data.pop("actor", None))
    return jsonify(service.patch(incident_id, actor, data))


@bp.post("/api/v1/incidents/<incident_id>/acknowledge")
@require("incident:write")
@doc("Acknowledge", body=AcknowledgeSchema, body_optional=True, responses={200: "The incident", 409: ""})
def acknowledge(incident_id: str) -> Any:
    data = AcknowledgeSchema().load(json_object(optional=True))
    return jsonify(service.acknowledge(incident_id, _actor(data.get("actor"))))


@bp.post("/api/v1/incidents/<incident_id>/resolve")
@require("incident:write")
@doc("Resolve", body=ResolveSchema, body_optional=True, responses={200: "The incident", 409: ""})
def resolve(incident_id: str) -> Any:
    data = ResolveSchema().load(json_object(optional=True))
    return jsonify(service.resolve(
        incident_id, _actor(data.get("resolved_by")), method=data.get("method", "Manual"), notes=data.get("notes"),
        root_cause=data.get("root_cause"), actions_taken=data.get("actions_taken"),
        corrected_severity=data.get("severity"),
    ))


@bp.post("/api/v1/incidents/<incident_id>/close")
@require("incident:write")
@doc("Close", body=CloseSchema, body_optional=True, responses={200: "The incident", 409: ""})
def close(incident_id: str) -> Any:
    data = CloseSchema().load(json_object(optional=True))
    return jsonify(service.close(incident_id, _actor(data.get("actor")), notes=data.get("notes")))


@bp.get("/api/v1/incidents/<incident_id>/timeline")
@require("incident:read")
@doc("Every change: who, when, old, new", responses={200: "{items}"})
def timeline(incident_id: str) -> Any:
    return jsonify({"items": service.incident_timeline(incident_id), "next_cursor": None})


@bp.get("/api/v1/incidents/<incident_id>/events")
@require("incident:read")
@doc("The events of an incident", responses={200: "{items, next_cursor}"})
def events(incident_id: str) -> Any:
    limit = request.args.get("limit", "100")
    cursor = request.args.get("cursor")
    if not limit.isdigit() or not 1 <= int(limit) <= 500:
        raise ApiError(422, "validation_failed", "limit must be 1..500", {"limit": ["must be between 1 and 500"]})
    if cursor is not None and not cursor.isdigit():
        raise ApiError(422, "validation_failed", "invalid cursor", {"cursor": ["invalid cursor"]})
    items, next_after = service.incident_events(incident_id, int(limit), int(cursor) if cursor else None)
    return jsonify({"items": items, "next_cursor": str(next_after) if next_after else None})
