"""Strict request bodies: JSON only (415 otherwise), well-formed (400 otherwise)."""

from __future__ import annotations

import json
from typing import Any

from flask import request

from api.errors import ApiError


def json_body(optional: bool = False) -> Any:
    raw = request.get_data(cache=True)
    if optional and not raw:
        return {}
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type",
                       f"expected Content-Type: application/json, got {mimetype or 'none'}")
    if not raw:
        raise ApiError(400, "malformed_json", "the request body is empty; expected a JSON document")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"the request body is not valid JSON: {exc}") from None


def json_object(optional: bool = False) -> dict[str, Any]:
    body = json_body(optional=optional)
    if not isinstance(body, dict):
        raise ApiError(422, "validation_failed", "the request body must be a JSON object",
                       {"_schema": ["expected a JSON object"]})
    return body
