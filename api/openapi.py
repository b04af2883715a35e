"""The OpenAPI 3 document, built from the running application, so it cannot drift from the code:

- every route Flask has registered is an operation (paths, methods, and path parameters read from
  the URL rules and their converters);
- its permission is the one its `require(...)` decorator enforces;
- its request body and query parameters are the marshmallow schemas the view loads, converted by
  apispec, declared beside the view with `@doc(body=..., query=...)`;
- its summary and description are the view's docstring (or `@doc`'s summary), its error responses
  follow from the above (a permission can answer 401/403/429, a body 400/413/415/422, ...).

`/api/v1/openapi.json` serves `build_spec(current_app)`; docs/doors.md says more.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import Schema

from app.domain.ids import INCIDENT_ID_RE

F = TypeVar("F", bound=Callable[..., Any])

ERROR_CODES = {
    400: "Malformed JSON",
    401: "No or unknown credential",
    403: "Credential lacks the permission",
    404: "Not found",
    409: "Conflict (a transition the state machine does not allow, an existing name, ...)",
    413: "Body too large",
    415: "Content-Type is not application/json",
    422: "Schema violation; per-field messages in error.details",
    429: "Over the key's rate limit; see Retry-After",
    503: "A dependency is down",
}
_CONVERTER_TYPES = {"IntegerConverter": {"type": "integer"}, "FloatConverter": {"type": "number"}}
_IGNORED_METHODS = {"HEAD", "OPTIONS"}
_RULE_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")  # <incident_id>, <int:limit>


@dataclass(frozen=True)
class OperationDoc:
    """What a view declares about itself beyond its route and `require` permission."""

    summary: str | None = None
    body: tuple[type[Schema], ...] = ()
    body_optional: bool = False
    query: type[Schema] | None = None
    responses: Mapping[int, str] = field(default_factory=dict)
    permission: str | None = None  # for views that check a credential themselves (no `require`)


def doc(summary: str | None = None, *, body: type[Schema] | tuple[type[Schema], ...] | None = None,
        body_optional: bool = False, query: type[Schema] | None = None,
        responses: Mapping[int, str] | None = None, permission: str | None = None) -> Callable[[F], F]:
    """Decorator: the schemas a view loads and the answers it gives, for the OpenAPI document."""
    schemas = body if isinstance(body, tuple) else ((body,) if body is not None else ())

    def decorate(view: F) -> F:
        view.openapi = OperationDoc(summary, schemas, body_optional, query,  # type: ignore[attr-defined]
                                    dict(responses or {}), permission)
        return view

    return decorate


def _path_and_parameters(rule: Any) -> tuple[str, list[dict[str, Any]]]:
    """`/api/v1/incidents/<incident_id>` → `/api/v1/incidents/{incident_id}` and its path parameters."""
    parameters = []
    for variable in sorted(rule.arguments, key=rule.rule.index):
        kind = type(rule._converters[variable]).__name__
        schema: dict[str, Any] = dict(_CONVERTER_TYPES.get(kind, {"type": "string"}))
        if kind == "AnyConverter":  # <any(users, teams):resource>
            schema["enum"] = sorted(rule._converters[variable].items)
        if variable == "incident_id":
            schema["pattern"] = INCIDENT_ID_RE.pattern
        parameters.append({"name": variable, "in": "path", "required": True, "schema": schema})
    return _RULE_VARIABLE.sub(r"{\1}", rule.rule), parameters


def _operation(view: Callable[..., Any], rule: Any, method: str, path: str,
               parameters: list[dict[str, Any]]) -> dict[str, Any]:
    declared: OperationDoc = getattr(view, "openapi", None) or OperationDoc()
    permission = getattr(view, "permission", None) or declared.permission
    text = inspect.getdoc(view) or ""
    first, _, rest = text.partition("\n\n")
    summary = declared.summary or " ".join(first.split()) or rule.endpoint.replace("_", " ")
    # one view may serve several paths (/health and /api/v1/health): the id names method and path
    body: dict[str, Any] = {"summary": summary, "operationId": re.sub(r"\W+", "_", f"{method}{path}").strip("_")}
    notes = []
    if declared.summary and first:
        notes.append(" ".join(first.split()))
    if rest:
        notes.append(rest)
    if permission:
        body["security"] = [{"ApiKey": []}, {"Bearer": []}]
        notes.append("Any valid credential." if permission == "any" else f"Needs permission `{permission}`.")
    if notes:
        body["description"] = "\n\n".join(notes)
    params = list(parameters)
    if declared.query is not None:
        params.append({"in": "query", "schema": declared.query})
    if params:
        body["parameters"] = params
    codes: dict[int, str] = dict(declared.responses) or {200: "OK"}
    if getattr(rule, "websocket", False):
        codes = {101: "Switching Protocols: the WebSocket protocol of docs/doors.md", **codes}
        codes.pop(200, None)
    if permission:
        codes.update({c: codes.get(c, "") for c in (401, 403, 429) if not (permission == "any" and c == 403)})
    if declared.body:
        schemas = [{"$ref": "#/components/schemas/" + _name(s)} for s in declared.body]
        content = schemas[0] if len(schemas) == 1 else {"oneOf": schemas}
        body["requestBody"] = {"required": not declared.body_optional,
                               "content": {"application/json": {"schema": content}}}
        codes.update({c: codes.get(c, "") for c in (400, 413, 415, 422)})
    if declared.query is not None:
        codes.setdefault(422, "")
    if any(p["name"] == "incident_id" for p in parameters):
        codes.setdefault(404, "")
    body["responses"] = {}
    for code in sorted(codes):
        entry: dict[str, Any] = {"description": codes[code] or ERROR_CODES.get(code, "")}
        if code >= 400:
            entry["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        body["responses"][str(code)] = entry
    return body


def _name(schema: type[Schema]) -> str:
    return schema.__name__.removesuffix("Schema")


def build_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.0 document of every route `app` has registered."""
    spec = APISpec(
        title="LLM Incident Manager", version="0.1.0", openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Durable event ingest, incidents, and operations. Errors are "
                             "{\"error\": {\"code\", \"message\", \"details\"}}."},
    )
    spec.components.security_scheme("ApiKey", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
    spec.components.security_scheme("Bearer", {"type": "http", "scheme": "bearer"})
    spec.components.schema("Error", {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message", "details"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"}, "details": {"type": "object"}}}}})
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        declared: OperationDoc | None = getattr(view, "openapi", None)
        for schema in (declared.body if declared else ()):
            if _name(schema) not in spec.components.schemas:
                spec.components.schema(_name(schema), schema=schema)
        path, parameters = _path_and_parameters(rule)
        for method in sorted((rule.methods or set()) - _IGNORED_METHODS):
            paths.setdefault(path, {})[method.lower()] = _operation(view, rule, method.lower(), path, parameters)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()
