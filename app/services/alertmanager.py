"""Alertmanager's webhook (payload version 4): firing alerts become events, resolved alerts resolve
the incident their fingerprint opened. Pure parsing (`parse_alertmanager`, raising InvalidPayload
with field details), then `handle_alertmanager` runs it against the ingest and incident services."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from app.adapters.models import Event, Incident
from app.domain.fingerprint import fingerprint
from app.services import incidents
from app.services.ingest import Dispatcher, NewEvent, ingest_events
from app.services.payloads import InvalidPayload, parse_time, string_map

ALERTMANAGER_SOURCE = "alertmanager"
TITLE_MAX = 500  # incidents.title
# Labels that land in length-limited columns, with the column's own limit: a longer one is refused
# (422 naming the label) instead of reaching Postgres as a 500.
def _length(column: Any) -> int:
    return int(column.type.length)


_LIMITED_LABELS = (("service", _length(Incident.service)), ("job", _length(Incident.service)),
                   ("category", _length(Incident.category)), ("severity", _length(Event.severity)))
_EVENT_ID_MAX = _length(Event.event_id)


@dataclass(frozen=True)
class AlertmanagerBatch:
    firing: list[NewEvent]
    resolved: list[tuple[str, str]]  # (alert fingerprint, alertname)


def parse_alertmanager(body: Any) -> AlertmanagerBatch:
    """Alertmanager webhook payload version 4 → events to ingest and alerts to resolve.

    Per alert: the title is what Alertmanager users write for humans, the `summary` annotation
    (`annotations.title` first when present), else the bare alertname; labels give severity,
    service (service, else job) and tags (all labels, so the alertname stays searchable); the
    `description` annotation is the description; `fingerprint` is the dedup key; `startsAt` makes
    the event id, so Alertmanager's repeated notifications of one firing are duplicates.
    """
    if not isinstance(body, Mapping):
        raise InvalidPayload("the body must be a JSON object", {"_schema": ["expected a JSON object"]})
    errors: dict[str, list[str]] = {}
    if str(body.get("version", "")) != "4":
        errors["version"] = [f"expected webhook payload version \"4\", got {body.get('version')!r}"]
    alerts = body.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        errors["alerts"] = ["expected a non-empty list of alerts"]
    if errors:
        raise InvalidPayload("not an Alertmanager webhook (version 4) payload", errors)
    common_labels = string_map(body.get("commonLabels"), "commonLabels")
    firing: list[NewEvent] = []
    resolved: list[tuple[str, str]] = []
    for i, alert in enumerate(alerts or []):
        try:
            event, status = _alertmanager_alert(alert, common_labels)
        except InvalidPayload as exc:
            raise InvalidPayload(f"alerts[{i}]: {exc.message}",
                                 {f"alerts.{i}.{k}": v for k, v in exc.details.items()}) from None
        if status == "firing":
            firing.append(event)
        else:
            resolved.append((str(event.dedup_key), str(event.tags["alertname"])))
    return AlertmanagerBatch(firing, resolved)


def _alertmanager_alert(alert: Any, common_labels: Mapping[str, str]) -> tuple[NewEvent, str]:
    if not isinstance(alert, Mapping):
        raise InvalidPayload("expected an alert object", {"_schema": ["expected an object"]})
    status = alert.get("status")
    if status not in ("firing", "resolved"):
        raise InvalidPayload("status must be firing or resolved", {"status": ["expected \"firing\" or \"resolved\""]})
    labels = {**common_labels, **string_map(alert.get("labels"), "labels")}
    annotations = string_map(alert.get("annotations"), "annotations")
    alertname = labels.get("alertname")
    if not alertname:
        raise InvalidPayload("labels.alertname is required", {"labels": ["alertname is required"]})
    too_long = {f"labels.{name}": [f"longer than {limit} characters"]
                for name, limit in _LIMITED_LABELS if len(labels.get(name) or "") > limit}
    if too_long:
        raise InvalidPayload(f"labels too long: {', '.join(sorted(too_long))}", too_long)
    starts_at = parse_time(alert.get("startsAt"), "startsAt")
    alert_fp = alert.get("fingerprint")
    if not isinstance(alert_fp, str) or not alert_fp:
        # Alertmanager always sends one; compute a stable one from the labels for other senders.
        alert_fp = fingerprint({"source": ALERTMANAGER_SOURCE, "title": json.dumps(labels, sort_keys=True)},
                               ("source", "title"))[:16]
    if len(f"{alert_fp}:{alert.get('startsAt') or ''}") > _EVENT_ID_MAX:
        raise InvalidPayload("fingerprint too long", {"fingerprint": [f"longer than {_EVENT_ID_MAX - 40} characters"]})
    title = annotations.get("title") or annotations.get("summary") or alertname
    # The title column holds 500 characters: a longer summary is cut there and kept whole below.
    parts = [annotations.get("summary")] if title != annotations.get("summary") or len(title) > TITLE_MAX else []
    description = "\n\n".join(v for v in (*parts, annotations.get("description")) if v)
    event = NewEvent(
        source=ALERTMANAGER_SOURCE,
        event_id=f"{alert_fp}:{alert.get('startsAt') or ''}",
        title=title[:TITLE_MAX],
        raw=dict(alert),
        event_type="alert",
        category=labels.get("category"),
        description=description,
        severity=labels.get("severity"),
        timestamp=starts_at,
        resource={"type": "instance", "id": labels["instance"]} if labels.get("instance") else None,
        tags=labels,
        service=labels.get("service") or labels.get("job"),
        dedup_key=alert_fp,
    )
    return event, str(status)


@dataclass(frozen=True)
class AlertOutcome:
    status: str  # accepted | duplicate | resolved | not_open
    alert: str
    incident_id: str | None = None


def handle_alertmanager(batch: AlertmanagerBatch, dispatcher: Dispatcher | None) -> list[AlertOutcome]:
    """Ingest the firing alerts (durably), then resolve the incidents of the resolved ones."""
    outcomes: list[AlertOutcome] = []
    if batch.firing:
        results = ingest_events(batch.firing, dispatcher=dispatcher, door="alertmanager")
        for event, result in zip(batch.firing, results, strict=True):
            outcomes.append(AlertOutcome(result.status, str(event.tags["alertname"]), result.incident_id))
    for alert_fp, alertname in batch.resolved:
        incident_id = incidents.resolve_by_dedup_key(ALERTMANAGER_SOURCE, alert_fp, actor="alertmanager",
                                           notes=f"Alertmanager: {alertname} resolved")
        outcomes.append(AlertOutcome("resolved" if incident_id else "not_open", alertname, incident_id))
    return outcomes
