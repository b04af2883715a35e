"""ML over REST: real-time classification, model versions (list, activate, rollback, train) and
feedback on an incident's classification."""

from __future__ import annotations

from typing import Any, Mapping

from flask import Blueprint, jsonify
from marshmallow import EXCLUDE, INCLUDE, Schema, ValidationError, fields, missing, validate, validates_schema

from api.auth import current_principal, enforce, require
from api.body import json_object
from api.errors import ApiError
from api.openapi import doc
from api.schemas import FeedbackSchema
from app.config import get_settings
from app.services import feedback as feedback_service
from app.services.classification import classify_events
from ml.interface import ClassifierInput

bp = Blueprint("ml", __name__)


class ClassifyResourceSchema(Schema):
    class Meta:
        unknown = INCLUDE

    type = fields.String(validate=validate.Length(max=100))


class ClassifyEventSchema(Schema):
    """An event to classify: the fields of an ingest event that the classifier reads."""

    class Meta:
        unknown = EXCLUDE

    title = fields.String(required=True, validate=validate.Length(min=1, max=500))
    description = fields.String(load_default="", validate=validate.Length(max=100_000))
    source = fields.String(load_default="api", validate=validate.Length(min=1, max=100))
    event_type = fields.String(validate=validate.Length(max=100))
    category = fields.String(validate=validate.Length(max=100))
    resource_type = fields.String(validate=validate.Length(max=100))
    resource = fields.Nested(ClassifyResourceSchema)
    severity = fields.String(validate=validate.Length(min=1, max=50))  # the source's own severity
    tags = fields.Dict(keys=fields.String(), values=fields.Raw())
    metrics = fields.Dict(keys=fields.String(), values=fields.Raw())

    @validates_schema
    def _numeric_metrics(self, data: Mapping[str, Any], **_: Any) -> None:
        bad = [k for k, v in (data.get("metrics") or {}).items()
               if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            raise ValidationError({"metrics": [f"metric {k!r} must be a number" for k in bad]})


class ClassifyBatchSchema(Schema):
    events = fields.List(fields.Nested(ClassifyEventSchema), required=True)


EVENT = ClassifyEventSchema()
# (name, min, max, default) of the schema's string fields: the fast path reads its limits from the
# schema, so the two cannot disagree.
_STRINGS = tuple((name, length.min or 0, int(length.max or 0), field.load_default)
                 for name, field in EVENT.fields.items() if type(field) is fields.String
                 for length in field.validators if isinstance(length, validate.Length))
_RESOURCE_TYPE_MAX = next(int(v.max or 0) for v in ClassifyResourceSchema().fields["type"].validators
                          if isinstance(v, validate.Length))


def _plain_input(event: Any) -> ClassifierInput | None:
    """The event as ClassifyEventSchema would load it when it is plainly valid, else None (the schema
    then answers, with its per-field errors). Why: marshmallow costs ~0.25 ms an event, 70 % of a
    1,000-event classify request (profiled, docs/ml.md "Benchmark")."""
    if type(event) is not dict:
        return None
    values = {}
    for name, low, high, default in _STRINGS:
        value = event.get(name, default)
        if value is missing:
            value = None
        elif type(value) is not str or not low <= len(value) <= high:
            return None
        values[name] = value
    if values["title"] is None:
        return None
    resource = event.get("resource")
    resource_type = None
    if resource is not None:
        if type(resource) is not dict:
            return None
        resource_type = resource.get("type")
        if resource_type is not None and (type(resource_type) is not str or len(resource_type) > _RESOURCE_TYPE_MAX):
            return None
    tags = event.get("tags", {})
    metrics = event.get("metrics", {})
    if type(tags) is not dict or type(metrics) is not dict:
        return None
    for key, value in metrics.items():
        kind = type(value)
        if type(key) is not str or (kind is not float and kind is not int):
            return None
    for key, value in tags.items():
        if type(key) is not str or value is None:  # the schema's Raw values may not be null
            return None
    return ClassifierInput(
        title=values["title"], description=values["description"], source=values["source"],
        event_type=values["event_type"], category=values["category"],
        resource_type=values["resource_type"] or resource_type, source_severity=values["severity"],
        tags=tags, metrics=metrics,
    )


def _loaded_input(e: Mapping[str, Any]) -> ClassifierInput:
    return ClassifierInput(
        title=e["title"], description=e.get("description", ""), source=e.get("source", "api"),
        event_type=e.get("event_type"), category=e.get("category"),
        resource_type=e.get("resource_type") or (e.get("resource") or {}).get("type"),
        source_severity=e.get("severity"), tags=e.get("tags") or {}, metrics=e.get("metrics") or {},
    )


def _inputs(body: dict[str, Any]) -> list[ClassifierInput]:
    limit = get_settings().max_batch_events
    if "events" in body:
        events = body["events"]
        if not isinstance(events, list):
            raise ValidationError({"events": ["must be a list of events"]})
        if not events:
            raise ValidationError({"events": ["give at least one event"]})
        if len(events) > limit:
            raise ApiError(422, "validation_failed", f"at most {limit} events per request",
                           {"events": [f"{len(events)} events; the limit is {limit}"]})
        items = list(map(_plain_input, events))
        if None not in items:
            return items  # type: ignore[return-value]
        try:
            loaded = EVENT.load(events, many=True)
        except ValidationError as exc:
            raise ValidationError({"events": exc.messages}) from None
    else:
        item = _plain_input(body)
        if item is not None:
            return [item]
        loaded = [EVENT.load(body)]
    return [_loaded_input(e) for e in loaded]


@bp.post("/api/v1/ml/classify")
@doc(body=(ClassifyEventSchema, ClassifyBatchSchema), permission="event:create or incident:read",
     responses={200: "{model_version, confidence_threshold, predictions: [...]}"})
def classify() -> Any:
    """Classify one event or `{"events": [...]}`; needs `event:create` or `incident:read`. The same
    use case as the pipeline's stage (`classify_events`): the same severity for the same event."""
    principal = current_principal()
    enforce(principal, "event:create" if principal.can("event:create") else "incident:read")
    items = _inputs(json_object())
    settings = get_settings()
    version, results = classify_events(items, settings)
    predictions = []
    for result in results:
        prediction = result.prediction
        predictions.append({
            "severity": result.severity,
            "decided_by": result.severity_reason["decided_by"],
            "severity_reason": result.severity_reason,
            "predicted_severity": prediction.severity,
            "confidence": result.severity_reason["confidence"],
            "grounded": prediction.grounded,
            "source_severity": result.severity_reason["source_severity"],
            "mapped_source_severity": result.mapped_source_severity,
            "category": prediction.category,
            "category_confidence": round(prediction.category_confidence, 4),
            "probabilities": dict(prediction.probabilities),
            "model_version": prediction.model_version,
        })
    return jsonify({"model_version": version, "confidence_threshold": settings.ml.confidence_threshold,
                    "predictions": predictions})


@bp.get("/api/v1/ml/models")
@require("incident:read")
@doc("Model versions, newest first, with held-out metrics",
     responses={200: "{items, active_version, serving_version}"})
def list_models() -> Any:
    from ml import registry

    items = registry.list_versions()
    active = next((m["version"] for m in items if m["active"]), None)
    return jsonify({"items": items, "active_version": active, "serving_version": registry.serving_version()})


@bp.post("/api/v1/ml/models/<version>/activate")
@require("admin")
@doc("Activate a model version (file verified first)",
     responses={200: "The version", 404: "", 409: "File missing or corrupted"})
def activate_model(version: str) -> Any:
    from ml import registry

    try:
        return jsonify(registry.activate(version, actor=current_principal().name))
    except registry.RegistryError as exc:
        raise ApiError(404, "not_found", str(exc), {"version": version}) from None
    except registry.ModelLoadError as exc:
        raise ApiError(409, "model_unloadable", str(exc), {"version": version}) from None


@bp.post("/api/v1/ml/models/rollback")
@require("admin")
@doc("Go back to the previously active version",
     responses={200: "The version now active", 409: "Nothing to roll back to"})
def rollback_model() -> Any:
    from ml import registry

    try:
        return jsonify(registry.rollback(actor=current_principal().name))
    except registry.RegistryError as exc:
        raise ApiError(409, "nothing_to_roll_back", str(exc)) from None


@bp.post("/api/v1/ml/train")
@require("admin")
@doc(responses={202: "{status: queued, task_id}"})
def train() -> Any:
    """Queue a training on the `ml` queue (202); the gate decides whether it becomes active."""
    from tasks.ml import train_model

    result = train_model.delay(actor=current_principal().name)
    response = jsonify({"status": "queued", "task_id": result.id})
    response.status_code = 202
    return response


@bp.post("/api/v1/incidents/<incident_id>/feedback")
@require("incident:write")
@doc("True severity/category of an incident, for learning", body=FeedbackSchema,
     responses={201: "The training sample"})
def feedback(incident_id: str) -> Any:
    data = FeedbackSchema().load(json_object())
    actor = data.get("actor") or current_principal().name
    try:
        sample = feedback_service.record_feedback(incident_id, actor, severity=data.get("severity"),
                                                  category=data.get("category"), notes=data.get("notes"))
    except feedback_service.InvalidFeedback as exc:
        raise ApiError(422, "validation_failed", "the feedback does not match the schema", exc.errors) from None
    response = jsonify(sample)
    response.status_code = 201
    return response


