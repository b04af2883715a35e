"""Custom webhooks (integration guide §8): triggers and conditions, headers, bearer or basic auth,
the sandboxed payload template, an `Idempotency-Key` header, and an optional HMAC signature."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timezone
from typing import Any, Mapping

from app.adapters import http_client
from app.adapters.channels import Sent, counted
from app.adapters.http_client import DeliveryError
from app.config.outbound import OutboundSettings, WebhookSettings
from app.services.templates import TemplateError


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: the receiver recomputes it and
    refuses old timestamps, so a captured request cannot be replayed later."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def request(hook: WebhookSettings, outbound: OutboundSettings, event: str, incident: Mapping[str, Any],
            idempotency_key: str, now: datetime | None = None) -> tuple[bytes, dict[str, str]]:
    """The body (the rendered template) and headers of one call."""
    now = now or datetime.now(timezone.utc)
    context = {"event_type": event, "incident": dict(incident),
               "incident_url": outbound.incident_url(str(incident.get("id"))),
               "timestamp": now.isoformat(timespec="seconds").replace("+00:00", "Z")}
    json_payload = "json" in hook.headers.get("Content-Type", "application/json")
    body = hook.template.render(context, as_json=json_payload).encode()
    headers = {**hook.headers, "Idempotency-Key": idempotency_key, "X-Incident-Manager-Event": event}
    if hook.auth_type == "bearer":
        headers["Authorization"] = f"Bearer {hook.token}"
    elif hook.auth_type == "basic":
        headers["Authorization"] = "Basic " + base64.b64encode(f"{hook.username}:{hook.password}".encode()).decode()
    if hook.signing_secret:
        headers[hook.signature_header] = signature(hook.signing_secret, int(now.timestamp()), body)
    return body, headers


def send(hook: WebhookSettings, outbound: OutboundSettings, event: str, incident: Mapping[str, Any],
         idempotency_key: str) -> Sent:
    """Call the webhook once (retried inside on 429/5xx/connection errors, `retry.max_attempts`)."""

    def go() -> Sent:
        try:
            body, headers = request(hook, outbound, event, incident, idempotency_key)
        except TemplateError as exc:
            raise DeliveryError(hook.name, str(exc), False, kind="template") from None
        answer = http_client.send(hook.name, hook.method, hook.url, content=body, headers=headers,
                                  timeout_secs=hook.timeout_secs, max_attempts=hook.max_attempts)
        return Sent("webhook", hook.name, answer.status, answer.attempts, {})

    return counted("webhook", go)


def matching(outbound: OutboundSettings, event: str, incident: Mapping[str, Any]) -> list[WebhookSettings]:
    """The enabled webhooks whose triggers take this event for this incident."""
    return [hook for hook in outbound.webhooks if hook.wants(event, incident)]


