"""Strict request bodies: JSON only (415 otherwise), well-formed (400 otherwise)."""

from __future__ import annotations

import re
from typing import Any

import orjson
from flask import current_app, request

from api.errors import ApiError
from api.schemas import NUL_MESSAGE

# `\u0000` preceded by an even number of backslashes (an odd number escapes the backslash itself)
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def json_body(optional: bool = False) -> Any:
    raw = request.get_data(cache=True)
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit and request.content_length is None and len(raw) >= limit:
        # A chunked body (no Content-Length): werkzeug stops reading at the limit and hands over
        # the truncated prefix. More input left means the body was over the limit.
        if request.environ["wsgi.input"].read(1):
            raise ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes", {"max_bytes": limit})
    if optional and not raw:
        return {}
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type",
                       f"expected Content-Type: application/json, got {mimetype or 'none'}")
    if not raw:
        raise ApiError(400, "malformed_json", "the request body is empty; expected a JSON document")
    try:
        # orjson: ~4x faster on a 1,000-event batch, and strict: NaN/Infinity (not JSON, and
        # refused by Postgres' jsonb) are malformed here instead of failing later.
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"the request body is not valid JSON: {exc}") from None
    if b"\\u0000" in raw and _NUL_ESCAPE.search(raw):  # substring test first: memchr-fast
        # Postgres text and jsonb cannot hold U+0000: refuse it here rather than fail at the INSERT
        raise ApiError(422, "validation_failed", NUL_MESSAGE, {"_schema": [NUL_MESSAGE]})
    return body


def json_object(optional: bool = False) -> dict[str, Any]:
    body = json_body(optional=optional)
    if not isinstance(body, dict):
        raise ApiError(422, "validation_failed", "the request body must be a JSON object",
                       {"_schema": ["expected a JSON object"]})
    return body
