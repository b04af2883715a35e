"""The OpenAPI 3 document, generated from the marshmallow schemas (apispec). Doors add their
operations with `operation(...)` at import time; `/api/v1/openapi.json` serves the result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from api import schemas


@dataclass(frozen=True)
class Operation:
    path: str
    method: str
    summary: str
    permission: str | None
    request_schema: str | None = None
    responses: tuple[tuple[int, str], ...] = ()
    parameters: tuple[dict[str, Any], ...] = ()


ERROR_CODES = {
    400: "Malformed JSON",
    401: "No or unknown credential",
    403: "Credential lacks the permission",
    404: "Not found",
    409: "Transition not allowed by the state machine",
    413: "Body too large",
    415: "Content-Type is not application/json",
    422: "Schema violation; per-field messages in error.details",
    429: "Over the key's rate limit; see Retry-After",
}

_operations: list[Operation] = []
_schemas: dict[str, type] = {}


def operation(op: Operation) -> None:
    _operations.append(op)


def schema(name: str, cls: type) -> None:
    _schemas[name] = cls


for _name, _cls in {
    "Event": schemas.EventSchema, "EventBatch": schemas.BatchSchema, "ManualIncident": schemas.ManualIncidentSchema,
    "PatchIncident": schemas.PatchIncidentSchema, "Acknowledge": schemas.AcknowledgeSchema,
    "Resolve": schemas.ResolveSchema, "Close": schemas.CloseSchema,
}.items():
    schema(_name, _cls)

_ID = ({"name": "incident_id", "in": "path", "required": True,
        "schema": {"type": "string", "pattern": r"^INC-\d{8}-\d{5,}$"}},)
_LIST = tuple(
    {"name": n, "in": "query", "required": False, "schema": s}
    for n, s in [
        ("status", {"type": "string"}), ("severity", {"type": "string"}), ("source", {"type": "string"}),
        ("category", {"type": "string"}), ("team", {"type": "string"}),
        ("created_after", {"type": "string", "format": "date-time"}),
        ("created_before", {"type": "string", "format": "date-time"}), ("q", {"type": "string"}),
        ("limit", {"type": "integer", "minimum": 1, "maximum": 500}), ("cursor", {"type": "string"}),
    ]
)

for _op in [
    Operation("/api/v1/events/sentinel", "post", "Ingest one Sentinel event", "event:create", "Event",
              ((202, "Accepted, durable"), (200, "Duplicate (source, event_id)"), (400, ""), (401, ""), (403, ""),
               (413, ""), (415, ""), (422, ""), (429, ""))),
    Operation("/api/v1/events", "post", "Ingest one event, or {\"events\": [...]} up to 1,000", "event:create", "Event",
              ((202, "Accepted (batch: one result per event, in order)"), (200, "Duplicate"), (400, ""), (401, ""),
               (403, ""), (413, ""), (415, ""), (422, ""), (429, ""))),
    Operation("/api/v1/incidents", "get", "List incidents (filters, cursor pagination)", "incident:read",
              responses=((200, "{items, next_cursor}"), (401, ""), (403, ""), (422, "")), parameters=_LIST),
    Operation("/api/v1/incidents", "post", "Create an incident by hand", "incident:write", "ManualIncident",
              ((201, "Created"), (200, "Joined an active incident with the same fingerprint"), (400, ""), (401, ""),
               (403, ""), (415, ""), (422, ""))),
    Operation("/api/v1/incidents/{incident_id}", "get", "Get an incident (follows merged_into)", "incident:read",
              responses=((200, "The incident"), (401, ""), (403, ""), (404, "")), parameters=_ID),
    Operation("/api/v1/incidents/{incident_id}", "patch", "Assign, change severity/status/tags", "incident:write",
              "PatchIncident", ((200, "The incident"), (404, ""), (409, ""), (422, "")), _ID),
    Operation("/api/v1/incidents/{incident_id}/acknowledge", "post", "Acknowledge", "incident:write", "Acknowledge",
              ((200, "The incident"), (404, ""), (409, "")), _ID),
    Operation("/api/v1/incidents/{incident_id}/resolve", "post", "Resolve", "incident:write", "Resolve",
              ((200, "The incident"), (404, ""), (409, "")), _ID),
    Operation("/api/v1/incidents/{incident_id}/close", "post", "Close", "incident:write", "Close",
              ((200, "The incident"), (404, ""), (409, "")), _ID),
    Operation("/api/v1/incidents/{incident_id}/timeline", "get", "Every change: who, when, old, new", "incident:read",
              responses=((200, "{items}"), (404, "")), parameters=_ID),
    Operation("/api/v1/incidents/{incident_id}/events", "get", "The events of an incident", "incident:read",
              responses=((200, "{items, next_cursor}"), (404, "")), parameters=_ID),
    Operation("/health", "get", "Dependencies: database, broker, workers, beat", "any",
              responses=((200, "Healthy or degraded"), (503, "Not ready"))),
    Operation("/health/live", "get", "Liveness probe", None, responses=((200, "Alive"),)),
    Operation("/health/ready", "get", "Readiness probe", None, responses=((200, "Ready"), (503, "Not ready"))),
    Operation("/metrics", "get", "Prometheus exposition", "any", responses=((200, "text/plain"),)),
]:
    operation(_op)


def build_spec() -> dict[str, Any]:
    spec = APISpec(
        title="LLM Incident Manager", version="0.1.0", openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Durable event ingest, incidents, and operations. Errors are "
                             "{\"error\": {\"code\", \"message\", \"details\"}}."},
    )
    spec.components.security_scheme("ApiKey", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
    spec.components.security_scheme("Bearer", {"type": "http", "scheme": "bearer"})
    spec.components.schema("Error", {"type": "object", "properties": {"error": {"type": "object", "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}, "details": {"type": "object"}}}}})
    for name, cls in _schemas.items():
        spec.components.schema(name, schema=cls)
    paths: dict[str, dict[str, Any]] = {}
    for op in _operations:
        body: dict[str, Any] = {"summary": op.summary, "responses": {}}
        if op.permission:
            body["security"] = [{"ApiKey": []}, {"Bearer": []}]
            body["description"] = (f"Needs permission `{op.permission}`." if op.permission != "any"
                                   else "Any valid credential.")
        if op.parameters:
            body["parameters"] = list(op.parameters)
        if op.request_schema:
            body["requestBody"] = {"required": True, "content": {"application/json": {"schema": op.request_schema}}}
        for code, text in op.responses:
            entry: dict[str, Any] = {"description": text or ERROR_CODES.get(code, "")}
            if code >= 400:
                entry["content"] = {"application/json": {"schema": "Error"}}
            body["responses"][str(code)] = entry
        paths.setdefault(op.path, {})[op.method] = body
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()
