"""`GET /api/v1/incidents/{id}/notifications`: every delivery record of the incident with its status,
attempts, last error and the receiver's answer (`reason.delivery`)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from api.auth import require
from api.openapi import doc
from app.services.notifications import incident_notifications

bp = Blueprint("notifications", __name__)


@bp.get("/api/v1/incidents/<incident_id>/notifications")
@require("incident:read")
@doc("The incident's notification delivery records (status, attempts, last error, response)",
     responses={200: "{incident_id, items, next_cursor}", 404: ""})
def notifications(incident_id: str) -> Any:
    return jsonify(incident_notifications(incident_id))
