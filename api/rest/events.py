"""Event ingest over HTTP: Sentinel's endpoint and the generic single/batch endpoint."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from api.auth import require
from api.body import json_object
from api.errors import ApiError
from api.links import base_url, incident_links
from api.openapi import doc
from api.schemas import EventBatchSchema, EventSchema, load_event, to_new_event, validate_events
from app.config import get_settings
from app.services.group_commit import GroupCommitter
from app.services.ingest import IngestResult, ingest_events
from tasks.dispatch import dispatch_pipeline_in_background as dispatch_pipeline

bp = Blueprint("events", __name__)

ACCEPTED_MESSAGE = "Event received and queued for processing"
DUPLICATE_MESSAGE = "Duplicate event: already received; nothing changed"


def result_body(result: IngestResult, base: str | None = None) -> dict[str, Any]:
    if result.status == "rejected":
        return {"status": "rejected", "event_id": result.event_id, "error": result.error}
    return {
        "status": result.status,
        "event_id": result.event_id,
        "incident_id": result.incident_id,
        "message": ACCEPTED_MESSAGE if result.status == "accepted" else DUPLICATE_MESSAGE,
        "links": incident_links(result.incident_id, base),
    }


# Concurrent single-event requests of this process (greenlets of a gevent worker) share one
# statement; with one request at a time (sync workers) each is its own group.
_single_events = GroupCommitter(lambda events: ingest_events(events, dispatcher=dispatch_pipeline), door="rest")


def _single(body: dict[str, Any], default_source: str | None) -> Any:
    if default_source and "source" not in body:
        body = {**body, "source": default_source}
    data = load_event(body, nul_free=True)  # json_object refused NUL; ValidationError -> 422 per field
    result = _single_events.submit(to_new_event(data, body))
    return jsonify(result_body(result)), 202 if result.status == "accepted" else 200


@bp.post("/api/v1/events/sentinel")
@require("event:create")
@doc("Ingest one Sentinel event", body=EventSchema,
     responses={202: "Accepted, durable (after commit)", 200: "Duplicate (source, event_id): nothing changed"})
def sentinel_event() -> Any:
    return _single(json_object(), default_source="llm-sentinel")


@bp.post("/api/v1/events")
@require("event:create")
@doc("Ingest one event, or {\"events\": [...]} up to MAX_BATCH_EVENTS", body=(EventSchema, EventBatchSchema),
     responses={202: "Accepted (a batch: one result per event, in order)", 200: "Duplicate"})
def create_events() -> Any:
    body = json_object()
    if "events" not in body:
        return _single(body, default_source=None)
    events = body["events"]
    limit = get_settings().max_batch_events
    if not isinstance(events, list) or not events:
        raise ApiError(422, "validation_failed", "events must be a non-empty list",
                       {"events": ["expected a non-empty list"]})
    if len(events) > limit:
        raise ApiError(422, "validation_failed", f"a batch holds at most {limit} events, got {len(events)}",
                       {"events": [f"at most {limit} events per request"]})
    results: list[IngestResult | None] = [None] * len(events)
    valid, positions, rejected = validate_events(events, nul_free=True)  # json_object refused NUL
    for bad in rejected:
        results[bad.position] = IngestResult("rejected", bad.event_id, error=bad.errors)
    if valid:
        for position, result in zip(positions, ingest_events(valid, dispatcher=dispatch_pipeline), strict=True):
            results[position] = result
    summary = {s: sum(1 for r in results if r and r.status == s) for s in ("accepted", "duplicate", "rejected")}
    base = base_url()
    return jsonify({"results": [result_body(r, base) for r in results if r is not None], **summary}), 202
