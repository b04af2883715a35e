"""Channel senders: each builds its receiver's exact payload (integration guide §5–§8, recorded in
docs/notifications.md) from the incident as the REST API shows it, and sends it through the
outbound HTTP client (or SMTP) under the channel's circuit breaker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

import orjson

from app import metrics
from app.adapters.http_client import DeliveryError

T = TypeVar("T")


@dataclass(frozen=True)
class Sent:
    """What a receiver answered to one notification."""

    channel: str
    target: str
    status_code: int | None
    attempts: int
    reference: Mapping[str, Any] = field(default_factory=dict)  # e.g. Slack's channel + ts, JIRA's issue key


def json_body(payload: Any) -> bytes:
    return orjson.dumps(payload)


def counted(channel: str, send: Callable[[], T]) -> T:
    """Run one send and count it in incident_manager_notifications_sent_total{channel,outcome}."""
    try:
        result = send()
    except DeliveryError as exc:
        metrics.NOTIFICATIONS_SENT.labels(channel=channel, outcome=exc.kind if exc.retryable else "rejected").inc()
        raise
    metrics.NOTIFICATIONS_SENT.labels(channel=channel, outcome="sent").inc()
    return result


def title_case(word: str | None) -> str:
    """`performance` -> `Performance` (how the guide's Slack message shows a category)."""
    text = str(word or "")
    return text[:1].upper() + text[1:]
