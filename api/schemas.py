"""Marshmallow schemas of the doors, and the one event validator (`load_event`, `validate_events`)
that REST, WebSocket and gRPC share; the OpenAPI document is generated from these schemas."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from marshmallow import EXCLUDE, INCLUDE, Schema, ValidationError, fields, validate, validates_schema

from app.domain.incident import STATUS_NAMES
from app.domain.severity import SEVERITIES
from app.services.ingest import NewEvent

NUL_MESSAGE = "strings must not contain NUL (\\u0000) characters"  # Postgres text and jsonb cannot hold it
BLANK_MESSAGE = "must not be blank"


def _not_blank(value: str) -> None:
    if value.isspace():
        raise ValidationError(BLANK_MESSAGE)


def _has_nul(value: Any) -> bool:
    """Whether a NUL character is in any string (or key) of a decoded JSON value. Plain loops, no
    generators: it runs on every event of the fast path."""
    kind = type(value)
    if kind is str:
        return "\x00" in value
    if kind is dict:
        for key, item in value.items():
            if type(key) is str and "\x00" in key:
                return True
            item_kind = type(item)
            if item_kind is str:
                if "\x00" in item:
                    return True
            elif (item_kind is dict or item_kind is list) and _has_nul(item):
                return True
        return False
    if kind is list:
        for item in value:
            if _has_nul(item):
                return True
    return False


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

    event_id = fields.String(required=True, validate=[validate.Length(min=1, max=200), _not_blank])
    source = fields.String(required=True, validate=[validate.Length(min=1, max=100), _not_blank])
    source_version = fields.String(validate=validate.Length(max=50))
    timestamp = fields.AwareDateTime(format="iso", default_timezone=timezone.utc)
    event_type = fields.String(validate=validate.Length(max=100))
    category = fields.String(validate=validate.Length(max=100))
    title = fields.String(required=True, validate=[validate.Length(min=1, max=500), _not_blank])
    description = fields.String(validate=validate.Length(max=100_000))
    severity = fields.String(required=True, validate=[validate.Length(min=1, max=50), _not_blank])
    resource = fields.Nested(ResourceSchema)
    metrics = fields.Dict(keys=fields.String(), values=fields.Raw())
    tags = fields.Dict(keys=fields.String(), values=fields.Raw())
    payload = fields.Raw()
    service = fields.String(validate=validate.Length(max=200))
    dedup_key = fields.String(validate=validate.Length(min=1, max=255))

    @validates_schema
    def _scalar_tags_finite_metrics_no_nul(self, data: Mapping[str, Any], **_: Any) -> None:
        errors: dict[str, list[str]] = {}
        for name, value in (data.get("tags") or {}).items():
            if isinstance(value, (dict, list)):
                errors.setdefault("tags", []).append(f"tag {name!r} must be a string, number or boolean")
        for name, value in (data.get("metrics") or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value - value:
                errors.setdefault("metrics", []).append(f"metric {name!r} must be a finite number")
        for name, value in data.items():
            if "\x00" in name or _has_nul(value):
                errors.setdefault(name, []).append(NUL_MESSAGE)
        if errors:
            raise ValidationError(errors)


class EventBatchSchema(Schema):
    """`{"events": [...]}`: each event is validated on its own (`validate_events`), a bad one is
    rejected in its result and the others stored."""

    class Meta:
        unknown = EXCLUDE

    events = fields.List(fields.Nested(EventSchema), required=True, validate=validate.Length(min=1))


class FeedbackSchema(Schema):
    """The true classification of an incident, for learning."""

    class Meta:
        unknown = EXCLUDE

    severity = fields.String(validate=validate.OneOf(SEVERITIES))
    category = fields.String(validate=validate.Length(min=1, max=100))
    notes = fields.String(validate=validate.Length(max=10_000))
    actor = fields.String(validate=validate.Length(min=1, max=200))

    @validates_schema
    def _something(self, data: Mapping[str, Any], **_: Any) -> None:
        if "severity" not in data and "category" not in data:
            raise ValidationError("give severity, category or both")


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
    status = fields.String(validate=validate.OneOf(STATUS_NAMES))
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


class PageQuerySchema(Schema):
    """`?limit=&cursor=` of the paginated lists (limit at most 500; each list has its own default)."""

    class Meta:
        unknown = EXCLUDE

    limit = fields.Integer(validate=validate.Range(min=1, max=500))
    cursor = fields.String(validate=validate.Length(min=1))


class ListQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    status = fields.List(fields.String(validate=validate.OneOf(STATUS_NAMES)))
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


def _string_limits(schema: Schema) -> tuple[tuple[str, int, int, bool], ...]:
    """(name, min, max, required) of each string field with a Length: the fast path reads its limits
    from the schema, so the two cannot disagree on them."""
    limits = []
    for name, declared in schema.fields.items():
        if type(declared) is fields.String:
            [length] = [v for v in declared.validators if isinstance(v, validate.Length)]
            limits.append((name, length.min or 0, int(length.max or 0), declared.required))
    return tuple(limits)


_REQUIRED_STRINGS = tuple(limit for limit in _string_limits(EVENT_SCHEMA) if limit[3])
_OPTIONAL_STRINGS = tuple(limit for limit in _string_limits(EVENT_SCHEMA) if not limit[3])
_RESOURCE_STRINGS = _string_limits(ResourceSchema())


def _plainly_valid(body: Mapping[str, Any], nul_free: bool = False) -> dict[str, Any] | None:
    """The loaded event when `body` is plainly valid, else None (marshmallow then answers, with its
    per-field errors). Accepts a subset of what EventSchema accepts and loads it identically; it
    exists because marshmallow costs ~0.5 ms an event, which dominates a 1,000-event batch."""
    for name, low, high, _ in _REQUIRED_STRINGS:
        value = body.get(name)
        if type(value) is not str or not low <= len(value) <= high or value.isspace():
            return None
    for name, low, high, _ in _OPTIONAL_STRINGS:
        if name in body:
            value = body[name]
            if type(value) is not str or not low <= len(value) <= high:
                return None
    if not nul_free and _has_nul(body):
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
        for name, low, high, required in _RESOURCE_STRINGS:
            if name in resource or required:
                value = resource.get(name)
                if type(value) is not str or not low <= len(value) <= high:
                    return None
        if "metadata" in resource and type(resource["metadata"]) is not dict:
            return None
    if "metrics" in body:
        metrics = body["metrics"]
        # v - v is 0 for a finite number and NaN (truthy) for NaN or an infinity
        if type(metrics) is not dict or any(type(v) not in (int, float) or v - v for v in metrics.values()):
            return None
    if "tags" in body:
        tags = body["tags"]
        if type(tags) is not dict or any(v is None or isinstance(v, (dict, list)) for v in tags.values()):
            return None
    if "payload" in body and body["payload"] is None:
        return None  # EventSchema refuses a null payload; let it say so
    return data


def load_event(body: Mapping[str, Any], nul_free: bool = False) -> dict[str, Any]:
    """Validate one event body, whatever door it came through (REST, WebSocket, gRPC): the fast path
    for plain events, EventSchema otherwise; raises marshmallow's ValidationError with per-field
    messages ({field: [messages]}, nested for `resource`). `nul_free`: the door already knows no
    string holds NUL (it searched the raw bytes, one memchr), so the fast path skips that walk."""
    return _plainly_valid(body, nul_free) or EVENT_SCHEMA.load(body)


@dataclass(frozen=True)
class RejectedEvent:
    position: int  # index in the batch
    event_id: str
    errors: dict[str, Any]  # {field: [messages]}


def validate_events(items: Sequence[Any], default_source: str | None = None, nul_free: bool = False,
                    ) -> tuple[list[NewEvent], list[int], list[RejectedEvent]]:
    """A batch's events, each through `load_event`: the valid ones as NewEvents with their positions
    in `items`, and the rejected ones with their field errors. `default_source` fills a missing
    `source` (the stored raw payload stays as sent). REST batches and WebSocket frames use this."""
    valid: list[NewEvent] = []
    positions: list[int] = []
    rejected: list[RejectedEvent] = []
    for i, item in enumerate(items):
        if type(item) is not dict:
            rejected.append(RejectedEvent(i, "", {"_schema": ["expected a JSON object"]}))
            continue
        body = item if default_source is None or "source" in item else {**item, "source": default_source}
        try:
            valid.append(to_new_event(load_event(body, nul_free), item))
        except ValidationError as exc:
            rejected.append(RejectedEvent(i, str(item.get("event_id", "")), field_errors(exc)))
            continue
        positions.append(i)
    return valid, positions, rejected


def field_errors(exc: ValidationError) -> dict[str, Any]:
    """marshmallow's messages as the `details` of an error: always {field: [messages]}."""
    return exc.messages if isinstance(exc.messages, dict) else {"_schema": list(exc.messages)}


def flat_field_errors(details: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """{field: [messages]} (nested for `resource`) as (dotted.field, message) pairs, for doors whose
    error model is flat (gRPC's BadRequest field violations)."""
    pairs: list[tuple[str, str]] = []
    for name, value in details.items():
        path = f"{prefix}{name}"
        if isinstance(value, Mapping):
            pairs.extend(flat_field_errors(value, f"{path}."))
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, Mapping):
                    pairs.extend(flat_field_errors(item, f"{path}."))
                else:
                    pairs.append((path, str(item)))
        else:
            pairs.append((path, str(value)))
    return pairs


def to_new_event(data: Mapping[str, Any], raw: Mapping[str, Any], encrypted_payload: bytes | None = None) -> NewEvent:
    """A validated event body (`load_event`) as the ingest service's input."""
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
        encrypted_payload=encrypted_payload,
    )
