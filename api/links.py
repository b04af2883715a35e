"""Absolute links, from PUBLIC_BASE_URL or the request's host."""

from __future__ import annotations

from flask import has_request_context, request

from app.config import get_settings


def base_url() -> str:
    configured = get_settings().public_base_url
    if configured:
        return configured
    if has_request_context():
        # what request.host_url gives, without werkzeug's URL/IRI round trip (costly per request)
        return f"{request.scheme}://{request.host}{request.script_root}".rstrip("/")
    return f"http://localhost:{get_settings().api_port}"


def incident_links(incident_id: str | None, base: str | None = None) -> dict[str, str]:
    """`base`: base_url(), when the caller renders many links at once."""
    if not incident_id:
        return {}
    base = base or base_url()
    return {"incident": f"{base}/incidents/{incident_id}", "api": f"{base}/api/v1/incidents/{incident_id}"}
