"""Escalation over REST: users, teams, schedules and escalation policies (CRUD by name), who is on
call, an incident's escalation (state, pause, resume, escalate now) and incident analytics."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

from flask import Blueprint, jsonify, request

from api.auth import current_principal, require
from api.body import json_object
from api.errors import ApiError
from api.openapi import Operation, operation, schema
from app.services import analytics, escalation
from app.services import escalation_config as config

bp = Blueprint("escalation", __name__)

RESOURCES = {"users": config.USER, "teams": config.TEAM, "schedules": config.SCHEDULE,
             "escalation-policies": config.POLICY}
_NAME = ({"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},)
_ID = ({"name": "incident_id", "in": "path", "required": True, "schema": {"type": "string"}},)

for _path, _res in RESOURCES.items():
    _schema_name = {"users": "User", "teams": "Team", "schedules": "Schedule",
                    "escalation-policies": "EscalationPolicy"}[_path]
    schema(_schema_name, _res.schema)
    for _op in [
        Operation(f"/api/v1/{_path}", "get", f"List {_res.name}s", "incident:read",
                  responses=((200, "{items, next_cursor}"), (401, ""), (403, ""), (422, "")),
                  parameters=({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                          "maximum": 500}},
                              {"name": "cursor", "in": "query", "schema": {"type": "string"}})),
        Operation(f"/api/v1/{_path}", "post", f"Create a {_res.name}", "incident:write", _schema_name,
                  ((201, "Created"), (400, ""), (401, ""), (403, ""), (409, "The name is taken"), (415, ""),
                   (422, "Invalid field, unknown reference or escalation cycle"))),
        Operation(f"/api/v1/{_path}/{{name}}", "get", f"One {_res.name}", "incident:read",
                  responses=((200, "Found"), (401, ""), (403, ""), (404, "")), parameters=_NAME),
        Operation(f"/api/v1/{_path}/{{name}}", "put", f"Replace a {_res.name}", "incident:write", _schema_name,
                  ((200, "Replaced"), (404, ""), (422, "")), _NAME),
        Operation(f"/api/v1/{_path}/{{name}}", "patch", f"Change some fields of a {_res.name}", "incident:write",
                  _schema_name, ((200, "Changed"), (404, ""), (422, "")), _NAME),
        Operation(f"/api/v1/{_path}/{{name}}", "delete", f"Delete a {_res.name}", "incident:write",
                  responses=((204, "Deleted"), (404, ""), (409, "Still referenced")), parameters=_NAME),
    ]:
        operation(_op)
for _op in [
    Operation("/api/v1/schedules/{name}/oncall", "get", "Who is on call (`at`: ISO 8601 instant, default now)",
              "incident:read", responses=((200, "{schedule, at, on_call}"), (404, ""), (422, "")),
              parameters=_NAME + ({"name": "at", "in": "query", "schema": {"type": "string",
                                                                          "format": "date-time"}},)),
    Operation("/api/v1/incidents/{incident_id}/escalation", "get", "Escalation state and delivery records",
              "incident:read", responses=((200, "The state"), (404, "")), parameters=_ID),
    Operation("/api/v1/incidents/{incident_id}/escalation/pause", "post", "Pause escalation", "incident:write",
              responses=((200, "The state"), (404, ""), (409, "Not escalating or already paused")), parameters=_ID),
    Operation("/api/v1/incidents/{incident_id}/escalation/resume", "post", "Resume escalation", "incident:write",
              responses=((200, "The state"), (404, ""), (409, "Not paused")), parameters=_ID),
    Operation("/api/v1/incidents/{incident_id}/escalation/escalate", "post", "Page the next level now",
              "incident:write", responses=((200, "The state"), (404, ""), (409, "Nothing to escalate")),
              parameters=_ID),
    Operation("/api/v1/metrics/incidents", "get",
              "Counts, MTTA, MTTR (mean, p50, p90) and SLA compliance over [from, to), grouped", "incident:read",
              responses=((200, "{from, to, group_by, totals, groups}"), (422, "")),
              parameters=tuple({"name": n, "in": "query", "schema": {"type": "string"}}
                               for n in ("from", "to", "group_by"))),
]:
    operation(_op)


def _kind(resource: str) -> config.Kind:
    kind = RESOURCES.get(resource)
    if kind is None:
        raise ApiError(404, "not_found", f"no such collection: /api/v1/{resource}")
    return kind


def _call(fn: Callable[[], Any]) -> Any:
    """Map the configuration service's errors to 404 / 409 / 422."""
    try:
        return fn()
    except config.NotFound as exc:
        raise ApiError(404, "not_found", str(exc), {"name": exc.name}) from None
    except config.Conflict as exc:
        raise ApiError(409, "conflict", str(exc), exc.details) from None
    except config.Invalid as exc:
        raise ApiError(422, "validation_failed", str(exc), exc.details) from None


_COLLECTION = "/api/v1/<any(users, teams, schedules, 'escalation-policies'):resource>"


@bp.get(_COLLECTION)
@require("incident:read")
def list_objects(resource: str) -> Any:
    limit = request.args.get("limit", "100")
    if not limit.isdigit() or not 1 <= int(limit) <= 500:
        raise ApiError(422, "validation_failed", "limit must be 1..500", {"limit": ["must be between 1 and 500"]})
    items, next_cursor = config.list_objects(_kind(resource), int(limit), request.args.get("cursor") or None)
    return jsonify({"items": items, "next_cursor": next_cursor})


@bp.post(_COLLECTION)
@require("incident:write")
def create_object(resource: str) -> Any:
    kind = _kind(resource)
    data = config.load(kind, json_object())
    created = _call(lambda: config.create_object(kind, data))
    response = jsonify(created)
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/{resource}/{created['name']}"
    return response


@bp.get(_COLLECTION + "/<name>")
@require("incident:read")
def get_object(resource: str, name: str) -> Any:
    kind = _kind(resource)
    return jsonify(_call(lambda: config.get_object(kind, name)))


def _update(resource: str, name: str, replace: bool) -> Any:
    kind = _kind(resource)
    body = json_object()
    body.setdefault("name", name)
    if body["name"] != name:
        raise ApiError(422, "validation_failed", f"the name in the body differs from the URL; a {kind.name} "
                       "cannot be renamed", {"name": [f"must equal the {kind.name} name in the URL"]})
    data = config.load(kind, body, partial=not replace)
    return jsonify(_call(lambda: config.update_object(kind, name, data, replace=replace)))


@bp.put(_COLLECTION + "/<name>")
@require("incident:write")
def replace_object(resource: str, name: str) -> Any:
    return _update(resource, name, replace=True)


@bp.patch(_COLLECTION + "/<name>")
@require("incident:write")
def patch_object(resource: str, name: str) -> Any:
    return _update(resource, name, replace=False)


@bp.delete(_COLLECTION + "/<name>")
@require("incident:write")
def delete_object(resource: str, name: str) -> Any:
    kind = _kind(resource)
    _call(lambda: config.delete_object(kind, name))
    return "", 204


def _instant(name: str, default: datetime | None) -> datetime | None:
    raw = request.args.get(name)
    if not raw:
        return default
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise ApiError(422, "validation_failed", f"{name} is not an ISO 8601 date-time",
                       {name: ["expected an ISO 8601 date-time, e.g. 2027-03-28T07:30:00Z"]}) from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


@bp.get("/api/v1/schedules/<name>/oncall")
@require("incident:read")
def on_call(name: str) -> Any:
    at = _instant("at", datetime.now(timezone.utc))
    assert at is not None
    return jsonify(_call(lambda: config.on_call(name, at)))


def _escalation(action: Callable[[str, str], Any], incident_id: str) -> Any:
    try:
        return jsonify(action(incident_id, current_principal().name))
    except escalation.EscalationConflict as exc:
        raise ApiError(409, "conflict", str(exc), {"incident_id": exc.incident_id}) from None


@bp.get("/api/v1/incidents/<incident_id>/escalation")
@require("incident:read")
def escalation_state(incident_id: str) -> Any:
    return jsonify(escalation.get_state(incident_id))


@bp.post("/api/v1/incidents/<incident_id>/escalation/pause")
@require("incident:write")
def pause(incident_id: str) -> Any:
    return _escalation(escalation.pause, incident_id)


@bp.post("/api/v1/incidents/<incident_id>/escalation/resume")
@require("incident:write")
def resume(incident_id: str) -> Any:
    return _escalation(escalation.resume, incident_id)


@bp.post("/api/v1/incidents/<incident_id>/escalation/escalate")
@require("incident:write")
def escalate(incident_id: str) -> Any:
    return _escalation(escalation.escalate_now, incident_id)


@bp.get("/api/v1/metrics/incidents")
@require("incident:read")
def incident_metrics() -> Any:
    now = datetime.now(timezone.utc)
    start = _instant("from", None)
    end = _instant("to", now)
    group_by = request.args.get("group_by") or None
    try:
        return jsonify(analytics.incident_metrics(start, end, group_by))
    except analytics.InvalidQuery as exc:
        raise ApiError(422, "validation_failed", str(exc), exc.details) from None

