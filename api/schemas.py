"""Marshmallow schemas for the REST doors; the OpenAPI document is generated from them."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Mapping

from marshmallow import EXCLUDE, INCLUDE, Schema, ValidationError, fields, validate, validates_schema

from app.domain.severity import SEVERITIES
from app.services.ingest import NewEvent

STATUSES = ("NEW", "ACKNOWLEDGED", "IN_PROGRESS", "ESCALATED", "RESOLVED", "CLOSED")


class ResourceSchema(Schema):
    class Meta:
        unknown = INCLUDE

    type = fields.String(required=True, validate=validate.Length(min=1, max=100))
    id = fields.String(required=True, validate=validate.Length(min=1, max=200))
    name = fields.String(validate=validate.Length(max=500))
    metadata = fields.Dict(keys=fields.String())


class EventSchema(Schema):
    """An event as Sentinel sends it (integration guide §2); every source uses the same shape."""

    class Meta:
        unknown = INCLUDE  # unknown fields are kept in the stored raw payload

    event_id = fields.String(required=True, validate=validate.Length(min=1, max=200))
    source = fields.String(required=True, validate=validate.Length(min=1, max=100))
    source_version = fields.String(validate=validate.Length(max=50))
    timestamp = fields.AwareDateTime(format="iso", default_timezone=timezone.utc)
    event_type = fields.String(validate=validate.Length(max=100))
    category = fields.String(validate=validate.Length(max=100))
    title = fields.String(required=True, validate=validate.Length(min=1, max=500))
    description = fields.String(validate=validate.Length(max=100_000))
    severity = fields.String(required=True, validate=validate.Length(min=1, max=50))
    resource = fields.Nested(ResourceSchema)
    metrics = fields.Dict(keys=fields.String(), values=fields.Raw())
    tags = fields.Dict(keys=fields.String(), values=fields.Raw())
    payload = fields.Raw()
    service = fields.String(validate=validate.Length(max=200))
    dedup_key = fields.String(validate=validate.Length(min=1, max=255))

    @validates_schema
    def _scalar_tags_and_numeric_metrics(self, data: Mapping[str, Any], **_: Any) -> None:
        errors: dict[str, list[str]] = {}
        for name, value in (data.get("tags") or {}).items():
            if isinstance(value, (dict, list)):
                errors.setdefault("tags", []).append(f"tag {name!r} must be a string, number or boolean")
        for name, value in (data.get("metrics") or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                errors.setdefault("metrics", []).append(f"metric {name!r} must be a number")
        if errors:
            raise ValidationError(errors)


class BatchSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    events = fields.List(fields.Raw(), required=True)


class ManualIncidentSchema(Schema):
    """The reference README's `POST /api/v1/incidents` body."""

    class Meta:
        unknown = EXCLUDE

    source = fields.String(load_default="manual", validate=validate.Length(min=1, max=100))
    title = fields.String(required=True, validate=validate.Length(min=1, max=500))
    description = fields.String(load_default="", validate=validate.Length(max=100_000))
    severity = fields.String(required=True, validate=validate.Length(min=1, max=50))
    incident_type = fields.String(validate=validate.Length(max=100))
    category = fields.String(validate=validate.Length(max=100))
    event_id = fields.String(validate=validate.Length(min=1, max=200))
    tags = fields.Dict(keys=fields.String(), values=fields.Raw())
    resource = fields.Nested(ResourceSchema)
    service = fields.String(validate=validate.Length(max=200))
    assignee = fields.String(validate=validate.Length(max=200))
    team = fields.String(validate=validate.Length(max=200))


class PatchIncidentSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    assignee = fields.String(allow_none=True, validate=validate.Length(max=200))
    severity = fields.String(validate=validate.OneOf(SEVERITIES))
    status = fields.String(validate=validate.OneOf(STATUSES))
    tags = fields.Dict(keys=fields.String(), values=fields.Raw())
    team = fields.String(allow_none=True, validate=validate.Length(max=200))
    title = fields.String(validate=validate.Length(min=1, max=500))
    description = fields.String(validate=validate.Length(max=100_000))
    actor = fields.String(validate=validate.Length(max=200))

    @validates_schema
    def _not_empty(self, data: Mapping[str, Any], **_: Any) -> None:
        if not set(data) - {"actor"}:
            raise ValidationError(
                "nothing to change: give assignee, severity, status, tags, team, title or description")


class AcknowledgeSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    actor = fields.String(validate=validate.Length(min=1, max=200))


class ResolveSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    resolved_by = fields.String(validate=validate.Length(min=1, max=200))
    method = fields.String(load_default="Manual", validate=validate.Length(max=50))
    notes = fields.String(validate=validate.Length(max=100_000))
    root_cause = fields.String(validate=validate.Length(max=100_000))
    actions_taken = fields.List(fields.String())
    severity = fields.String(validate=validate.OneOf(SEVERITIES))  # a corrected severity (feeds learning)


class CloseSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    actor = fields.String(validate=validate.Length(min=1, max=200))
    notes = fields.String(validate=validate.Length(max=100_000))


class ListQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    status = fields.List(fields.String(validate=validate.OneOf(STATUSES)))
    severity = fields.List(fields.String(validate=validate.OneOf(SEVERITIES)))
    source = fields.List(fields.String())
    category = fields.List(fields.String())
    team = fields.List(fields.String())
    created_after = fields.AwareDateTime(format="iso", default_timezone=timezone.utc)
    created_before = fields.AwareDateTime(format="iso", default_timezone=timezone.utc)
    q = fields.String(validate=validate.Length(min=1, max=200))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    cursor = fields.String()


EVENT_SCHEMA = EventSchema()

_STR_LIMITS = (("event_id", 1, 200), ("source", 1, 100), ("title", 1, 500), ("severity", 1, 50))
_OPTIONAL_STR_LIMITS = (("source_version", 0, 50), ("event_type", 0, 100), ("category", 0, 100),
                        ("description", 0, 100_000), ("service", 0, 200), ("dedup_key", 1, 255))


def _plainly_valid(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The loaded event when `body` is plainly valid, else None (marshmallow then answers, with its
    per-field errors). Accepts a subset of what EventSchema accepts and loads it identically; it
    exists because marshmallow costs ~0.5 ms an event, which dominates a 1,000-event batch."""
    for name, low, high in _STR_LIMITS:
        value = body.get(name)
        if type(value) is not str or not low <= len(value) <= high:
            return None
    for name, low, high in _OPTIONAL_STR_LIMITS:
        if name in body:
            value = body[name]
            if type(value) is not str or not low <= len(value) <= high:
                return None
    data = dict(body)
    if "timestamp" in body:
        value = body["timestamp"]
        if type(value) is not str or not 10 <= len(value) <= 40 or value[4:5] != "-" or "T" not in value:
            return None
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        data["timestamp"] = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    if "resource" in body:
        resource = body["resource"]
        if type(resource) is not dict:
            return None
        for name, high in (("type", 100), ("id", 200)):
            value = resource.get(name)
            if type(value) is not str or not 1 <= len(value) <= high:
                return None
        if "name" in resource and (type(resource["name"]) is not str or len(resource["name"]) > 500):
            return None
        if "metadata" in resource and type(resource["metadata"]) is not dict:
            return None
    if "metrics" in body:
        metrics = body["metrics"]
        if type(metrics) is not dict or any(type(v) not in (int, float) for v in metrics.values()):
            return None
    if "tags" in body:
        tags = body["tags"]
        if type(tags) is not dict or any(v is None or isinstance(v, (dict, list)) for v in tags.values()):
            return None
    if "payload" in body and body["payload"] is None:
        return None  # EventSchema refuses a null payload; let it say so
    return data


def load_event(body: Mapping[str, Any]) -> dict[str, Any]:
    """Validate one event body (EventSchema); raises marshmallow's ValidationError with per-field
    messages."""
    return _plainly_valid(body) or EVENT_SCHEMA.load(body)


def to_new_event(data: Mapping[str, Any], raw: Mapping[str, Any]) -> NewEvent:
    """A validated event body as the ingest service's input."""
    timestamp = data.get("timestamp")
    return NewEvent(
        source=data["source"],
        event_id=data["event_id"],
        title=data["title"],
        raw=raw,
        event_type=data.get("event_type"),
        category=data.get("category"),
        description=data.get("description") or "",
        severity=data.get("severity"),
        timestamp=timestamp,
        resource=data.get("resource"),
        metrics=data.get("metrics"),
        tags=data.get("tags") or {},
        service=data.get("service"),
        dedup_key=data.get("dedup_key"),
    )
