"""Absolute links, from PUBLIC_BASE_URL or the request's host."""

from __future__ import annotations

from flask import has_request_context, request

from app.config import get_settings


def base_url() -> str:
    configured = get_settings().public_base_url
    if configured:
        return configured
    if has_request_context():
        return request.host_url.rstrip("/")
    return f"http://localhost:{get_settings().api_port}"


def incident_links(incident_id: str | None) -> dict[str, str]:
    if not incident_id:
        return {}
    base = base_url()
    return {"incident": f"{base}/incidents/{incident_id}", "api": f"{base}/api/v1/incidents/{incident_id}"}
