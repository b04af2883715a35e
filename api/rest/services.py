"""The service catalog over REST: `/api/v1/services` CRUD and `POST /api/v1/services/import` (YAML)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from api.auth import require
from api.body import json_object
from api.errors import ApiError
from api.openapi import doc
from api.schemas import PageQuerySchema
from app.services import service_catalog as catalog

bp = Blueprint("services", __name__)

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "application/json")


class ServiceSchema(Schema):
    """A catalog entry. `metrics_queries` maps a metric name to a PromQL template (`{service}` is
    replaced by the service name) that enrichment runs as an instant query."""

    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=validate.Regexp(
        catalog.NAME_RE, error="letters, digits, '.', '_' or '-', at most 200 characters"))
    description = fields.String(validate=validate.Length(max=10_000))
    owner_team = fields.String(allow_none=True, validate=validate.Length(min=1, max=200))
    tier = fields.String(allow_none=True, validate=validate.OneOf(catalog.TIERS))
    dependencies = fields.List(fields.String(validate=validate.Length(min=1, max=200)),
                               validate=validate.Length(max=200))
    runbook_url = fields.Url(allow_none=True, schemes={"http", "https"}, require_tld=False)
    escalation_policy = fields.String(allow_none=True, validate=validate.Length(min=1, max=200))
    metrics_queries = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=100)),
                                  values=fields.String(validate=validate.Length(min=1, max=2000)),
                                  validate=validate.Length(max=20))
    tags = fields.Dict(keys=fields.String())

    @validates_schema
    def _no_self_dependency(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("name") and data["name"] in (data.get("dependencies") or []):
            raise ValidationError("a service cannot depend on itself", "dependencies")


def _not_found(exc: catalog.ServiceNotFound) -> ApiError:
    return ApiError(404, "not_found", str(exc), {"name": exc.name})


@bp.get("/api/v1/services")
@require("incident:read")
@doc("List the service catalog", query=PageQuerySchema, responses={200: "{items, next_cursor}"})
def list_services() -> Any:
    page = PageQuerySchema().load(request.args)  # ValidationError -> 422 with per-field errors
    items, next_cursor = catalog.list_services(page.get("limit", 100), page.get("cursor"))
    return jsonify({"items": items, "next_cursor": next_cursor})


@bp.post("/api/v1/services")
@require("incident:write")
@doc("Add a service to the catalog", body=ServiceSchema,
     responses={201: "Created", 409: "A service with this name exists"})
def create_service() -> Any:
    data = ServiceSchema().load(json_object())
    try:
        created = catalog.create_service(data)
    except catalog.ServiceExists as exc:
        raise ApiError(409, "conflict", str(exc), {"name": exc.name}) from None
    response = jsonify(created)
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/services/{created['name']}"
    return response


@bp.post("/api/v1/services/import")
@require("incident:write")
@doc("Import a YAML catalog (`services: [...]`); upserts by name, all or nothing",
     responses={200: "{created, updated}", 400: "Not YAML", 415: "", 422: ""})
def import_services() -> Any:
    mimetype = (request.mimetype or "").lower()
    if mimetype not in YAML_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       f"send the catalog as YAML (Content-Type: application/yaml); got {mimetype or 'none'}",
                       {"accepted": list(YAML_TYPES)})
    raw = request.get_data(cache=False)
    if not raw.strip():
        raise ApiError(400, "empty_body", "the request body is empty; expected a YAML catalog")
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_yaml", "the catalog is not UTF-8 text") from None
    try:
        result = catalog.import_yaml(body)
    except catalog.CatalogImportError as exc:
        status = 400 if "_schema" in exc.details and "not valid YAML" in str(exc) else 422
        code = "malformed_yaml" if status == 400 else "validation_failed"
        raise ApiError(status, code, str(exc), exc.details) from None
    return jsonify({"created": result.created, "updated": result.updated})


@bp.get("/api/v1/services/<name>")
@require("incident:read")
@doc("One service", responses={200: "The service", 404: ""})
def get_service(name: str) -> Any:
    try:
        return jsonify(catalog.get_service(name))
    except catalog.ServiceNotFound as exc:
        raise _not_found(exc) from None


def _update(name: str, replace: bool) -> Any:
    body = json_object()
    body.setdefault("name", name)
    if body["name"] != name:
        raise ApiError(422, "validation_failed",
                       "the name in the body differs from the URL; a service cannot be renamed",
                       {"name": ["must equal the service name in the URL"]})
    data = ServiceSchema(partial=not replace).load(body)
    try:
        return jsonify(catalog.update_service(name, data, replace=replace))
    except catalog.ServiceNotFound as exc:
        raise _not_found(exc) from None


@bp.put("/api/v1/services/<name>")
@require("incident:write")
@doc("Replace a service", body=ServiceSchema, responses={200: "The service", 404: ""})
def replace_service(name: str) -> Any:
    return _update(name, replace=True)


@bp.patch("/api/v1/services/<name>")
@require("incident:write")
@doc("Change some fields of a service", body=ServiceSchema, responses={200: "The service", 404: ""})
def patch_service(name: str) -> Any:
    return _update(name, replace=False)


@bp.delete("/api/v1/services/<name>")
@require("incident:write")
@doc("Remove a service", responses={204: "Deleted", 404: ""})
def delete_service(name: str) -> Any:
    try:
        catalog.delete_service(name)
    except catalog.ServiceNotFound as exc:
        raise _not_found(exc) from None
    return "", 204
