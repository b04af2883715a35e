"""Escalation over REST: users, teams, schedules, escalation policies and playbooks (CRUD by name),
who is on call, an incident's escalation (state, pause, resume, escalate now) and incident analytics."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

from flask import Blueprint, jsonify, request

from api.auth import current_principal, require
from api.body import json_object
from api.errors import ApiError
from api.openapi import doc
from api.schemas import PageQuerySchema
from app.services import analytics, escalation
from app.services import escalation_config as config

bp = Blueprint("escalation", __name__)

RESOURCES = {"users": config.USER, "teams": config.TEAM, "schedules": config.SCHEDULE,
             "escalation-policies": config.POLICY, "playbooks": config.PLAYBOOK}
_BODIES = tuple(kind.schema for kind in RESOURCES.values())  # the body of a collection is one of these


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


_COLLECTION = "/api/v1/<any(users, teams, schedules, 'escalation-policies', playbooks):resource>"


@bp.get(_COLLECTION)
@require("incident:read")
@doc("List users, teams, schedules, escalation policies or playbooks", query=PageQuerySchema,
     responses={200: "{items, next_cursor}"})
def list_objects(resource: str) -> Any:
    page = PageQuerySchema().load(request.args)  # ValidationError -> 422 with per-field errors
    items, next_cursor = config.list_objects(_kind(resource), page.get("limit", 100), page.get("cursor"))
    return jsonify({"items": items, "next_cursor": next_cursor})


@bp.post(_COLLECTION)
@require("incident:write")
@doc("Create a user, team, schedule, escalation policy or playbook", body=_BODIES,
     responses={201: "Created", 409: "The name is taken", 422: "Invalid field, unknown reference or escalation cycle"})
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
@doc("One user, team, schedule, escalation policy or playbook", responses={200: "Found", 404: ""})
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
@doc("Replace one", body=_BODIES, responses={200: "Replaced", 404: ""})
def replace_object(resource: str, name: str) -> Any:
    return _update(resource, name, replace=True)


@bp.patch(_COLLECTION + "/<name>")
@require("incident:write")
@doc("Change some fields of one", body=_BODIES, responses={200: "Changed", 404: ""})
def patch_object(resource: str, name: str) -> Any:
    return _update(resource, name, replace=False)


@bp.delete(_COLLECTION + "/<name>")
@require("incident:write")
@doc("Delete one", responses={204: "Deleted", 404: "", 409: "Still referenced"})
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
@doc("Who is on call (`at`: ISO 8601 instant, default now)",
     responses={200: "{schedule, at, on_call}", 404: "", 422: ""})
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
@doc("Escalation state and delivery records", responses={200: "The state"})
def escalation_state(incident_id: str) -> Any:
    return jsonify(escalation.get_state(incident_id))


@bp.post("/api/v1/incidents/<incident_id>/escalation/pause")
@require("incident:write")
@doc("Pause escalation", responses={200: "The state", 409: "Not escalating or already paused"})
def pause(incident_id: str) -> Any:
    return _escalation(escalation.pause, incident_id)


@bp.post("/api/v1/incidents/<incident_id>/escalation/resume")
@require("incident:write")
@doc("Resume escalation", responses={200: "The state", 409: "Not paused"})
def resume(incident_id: str) -> Any:
    return _escalation(escalation.resume, incident_id)


@bp.post("/api/v1/incidents/<incident_id>/escalation/escalate")
@require("incident:write")
@doc("Page the next level now", responses={200: "The state", 409: "Nothing to escalate"})
def escalate(incident_id: str) -> Any:
    return _escalation(escalation.escalate_now, incident_id)


@bp.get("/api/v1/metrics/incidents")
@require("incident:read")
@doc("Counts, MTTA, MTTR (mean, p50, p90) and SLA compliance over [from, to), grouped",
     responses={200: "{from, to, group_by, percentiles, totals, groups}", 422: ""})
def incident_metrics() -> Any:
    now = datetime.now(timezone.utc)
    start = _instant("from", None)
    end = _instant("to", now)
    group_by = request.args.get("group_by") or None
    try:
        return jsonify(analytics.incident_metrics(start, end, group_by))
    except analytics.InvalidQuery as exc:
        raise ApiError(422, "validation_failed", str(exc), exc.details) from None

