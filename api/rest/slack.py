"""`POST /api/v1/integrations/slack/actions`: Slack's interactivity endpoint. The Acknowledge button
of an incident message acknowledges the incident as the Slack user who pressed it.

Authentication is Slack's request signature, checked before anything is parsed: HMAC-SHA256 with the
app's signing secret over `v0:{X-Slack-Request-Timestamp}:{raw body}`, compared in constant time,
and a timestamp within five minutes of now (a captured request cannot be replayed later). A
forged, missing or stale signature answers 401 and changes nothing. docs/notifications.md, "Slack".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qs

from flask import Blueprint, jsonify, request

from api.errors import ApiError
from api.openapi import doc
from app import metrics
from app.adapters.channels.slack import ACK_ACTION_ID
from app.config.outbound import get_outbound_settings
from app.domain.incident import IllegalTransition, IncidentNotFound
from app.services import incidents, notifications

log = logging.getLogger(__name__)
bp = Blueprint("slack", __name__)
REPLAY_WINDOW_SECS = 300


def verify(secret: str, timestamp: str | None, signature: str | None, body: bytes, now: float | None = None) -> None:
    """Raise ApiError(401) unless `signature` is Slack's v0 signature of `body` at a fresh `timestamp`."""
    if not timestamp or not signature:
        raise ApiError(401, "unauthenticated", "missing X-Slack-Request-Timestamp or X-Slack-Signature")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise ApiError(401, "unauthenticated", "X-Slack-Request-Timestamp is not a Unix time") from None
    age = (time.time() if now is None else now) - sent_at
    if abs(age) > REPLAY_WINDOW_SECS:
        raise ApiError(401, "unauthenticated",
                       f"X-Slack-Request-Timestamp is {int(age)} s away from now (limit {REPLAY_WINDOW_SECS} s)")
    expected = "v0=" + hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise ApiError(401, "unauthenticated", "X-Slack-Signature does not match the request")


def _payload(body: bytes) -> dict[str, Any]:
    try:
        form = parse_qs(body.decode("utf-8"), strict_parsing=True)
        payload = json.loads(form["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError):
        raise ApiError(400, "bad_request",
                       "expected a form body with a `payload` JSON field (Slack's format)") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "bad_request", "`payload` must be a JSON object")
    return payload


def _answer(outcome: str, text: str) -> Any:
    metrics.SLACK_ACTIONS.labels(outcome=outcome).inc()
    return jsonify({"response_type": "ephemeral", "replace_original": False, "text": text})


@bp.post("/api/v1/integrations/slack/actions")
@doc("Slack interactivity (the Acknowledge button); authenticated by Slack's v0 request signature",
     responses={200: "Handled; `text` says what happened", 400: "", 401: "", 503: ""})
def actions() -> Any:
    secret = get_outbound_settings().slack.signing_secret
    if not secret:
        raise ApiError(503, "not_configured", "Slack actions are off: set notifications.slack.signing_secret "
                                              "(or SLACK_SIGNING_SECRET)")
    body = request.get_data(cache=True)  # the raw bytes Slack signed, before any form parsing
    try:
        verify(secret, request.headers.get("X-Slack-Request-Timestamp"), request.headers.get("X-Slack-Signature"),
               body)
    except ApiError:
        metrics.SLACK_ACTIONS.labels(outcome="unauthenticated").inc()
        raise
    payload = _payload(body)
    user = payload.get("user") or {}
    who = str(user.get("username") or user.get("name") or user.get("id") or "unknown")
    pressed = [a for a in payload.get("actions") or [] if isinstance(a, dict) and a.get("action_id") == ACK_ACTION_ID]
    if payload.get("type") != "block_actions" or not pressed:
        return _answer("ignored", "nothing to do for this action")
    incident_id = str(pressed[0].get("value") or "")
    actor = f"slack:{who}"
    try:
        incident = incidents.acknowledge(incident_id, actor)
    except IncidentNotFound:
        return _answer("not_found", f"incident {incident_id} does not exist")
    except IllegalTransition as exc:
        return _answer("conflict", f"{incident_id} is already {exc.current}; nothing changed")
    log.info("incident acknowledged from Slack", extra={"incident_id": incident["id"], "actor": actor})
    container = payload.get("container") or {}
    channel, ts = container.get("channel_id"), container.get("message_ts")
    # A message we posted is redrawn by the acknowledge's lifecycle record (one chat.update); another
    # one (posted before its reference was kept, or by someone else) is refreshed here.
    if channel and ts and get_outbound_settings().slack.bot_token \
            and (channel, ts) not in notifications.posted_slack_messages(incident["id"]):
        from tasks.notifications import slack_refresh  # the message shows the new status (chat.update)

        slack_refresh.delay(incident["id"], channel, ts)
    return _answer("acknowledged", f"{incident['id']} acknowledged by {who}")
