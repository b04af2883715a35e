"""Feedback for learning: people's true severity/category of an incident become training samples.

Two ways in: `POST /api/v1/incidents/{id}/feedback` (`record_feedback`) and a resolution that
carries a corrected severity (`record_resolution_sample`, called inside the resolve transaction).
A sample stores the incident's classifier input as it is now, the labels, and what the model had
predicted; a label left out of a feedback is taken as confirmed from the incident. Beat retrains
once `ml.training_batch_size` new samples exist (`ml.training.train_if_due`)."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.adapters.db import read_session, unit_of_work
from app.adapters.ml_models import TrainingSample
from app.adapters.models import Incident, TimelineEntry
from app.domain import sla
from app.domain.incident import IncidentNotFound, follow_merges
from app.domain.severity import SEVERITIES
from app.domain.times import iso

log = logging.getLogger(__name__)


class InvalidFeedback(ValueError):
    """A label that cannot be learnt from; `errors` is {field: [messages]}."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items()))
        self.errors = errors


def incident_features(incident: Incident) -> dict[str, Any]:
    """The classifier input of an incident, as stored in a sample (JSON-safe)."""
    resource = incident.resource or {}
    return {
        "title": incident.title,
        "description": incident.description or "",
        "source": incident.source,
        "event_type": incident.event_type,
        "category": incident.category,
        "resource_type": resource.get("type") if isinstance(resource, dict) else None,
        "source_severity": incident.source_severity,
        "tags": dict(incident.tags or {}),
        "metrics": dict(incident.metrics or {}),
    }


def _fallback_category(incident: Incident) -> str | None:
    return incident.predicted_category or incident.category


def validate_labels(severity: str | None, category: str | None) -> None:
    """Raise InvalidFeedback unless the labels are a known severity and a known category."""
    from ml.training import known_categories

    errors: dict[str, list[str]] = {}
    if severity is None and category is None:
        errors["_schema"] = ["give severity, category or both"]
    if severity is not None and severity not in SEVERITIES:
        errors["severity"] = [f"must be one of {', '.join(SEVERITIES)}"]
    if category is not None and category not in known_categories():
        errors["category"] = [f"must be one of {', '.join(known_categories())}"]
    if errors:
        raise InvalidFeedback(errors)


def _add_sample(session: Session, incident: Incident, origin: str, severity: str | None, category: str | None,
                actor: str) -> TrainingSample:
    sample = TrainingSample(
        incident_id=incident.id, origin=origin, features=incident_features(incident),
        severity=severity or incident.severity, category=category or _fallback_category(incident),
        predicted_severity=incident.predicted_severity, predicted_category=incident.predicted_category,
        model_version=incident.model_version, created_by=actor, created_at=datetime.now(timezone.utc),
    )
    session.add(sample)
    return sample


def record_feedback(incident_id: str, actor: str, severity: str | None = None, category: str | None = None,
                    notes: str | None = None) -> dict[str, Any]:
    """Store the true severity/category of an incident as a training sample (and a timeline entry).
    Raises IncidentNotFound, InvalidFeedback; writes nothing then."""
    validate_labels(severity, category)
    with unit_of_work() as session:
        incident = follow_merges(incident_id, lambda current: session.get(Incident, current))
        if incident is None:
            raise IncidentNotFound(incident_id)
        sample = _add_sample(session, incident, "feedback", severity, category, actor)
        details: dict[str, Any] = {"notes": notes} if notes else {}
        if severity is not None:  # a person's severity wins at once, not only in the next model
            details["severity_reason"] = _apply_severity(session, incident, severity, actor, sample.created_at)
        session.add(TimelineEntry(
            incident_id=incident.id, at=sample.created_at, actor=actor, kind="classification_feedback",
            field="classification",
            old_value=f"{incident.predicted_severity or '-'}/{incident.predicted_category or '-'}",
            new_value=f"{sample.severity}/{sample.category}",
            details=details or None,
        ))
        session.flush()
        result = sample_to_dict(sample)
    result["pending_samples"] = pending_samples()
    log.info("classification feedback recorded", extra={"incident_id": result["incident_id"], "sample_id": result["id"],
                                                        "severity": result["severity"], "category": result["category"]})
    return result


def _apply_severity(session: Session, incident: Incident, severity: str, actor: str, now: datetime) -> dict[str, Any]:
    """Set the feedback's severity on the incident (reason `feedback`; SLA deadlines follow it)."""
    from app.services.incidents import manual_reason

    reason = manual_reason(incident, actor, decided_by="feedback")
    incident.severity_reason = reason
    if severity != incident.severity:
        session.add(TimelineEntry(incident_id=incident.id, at=now, actor=actor, kind="severity_changed",
                                  field="severity", old_value=incident.severity, new_value=severity,
                                  details={"severity_reason": reason}))
        incident.severity = severity
        for name, value in sla.deadline_fields(severity, incident.created_at).items():
            setattr(incident, name, value)
        incident.updated_at = now
    return reason


def record_resolution_sample(session: Session, incident: Incident, corrected_severity: str, actor: str) -> None:
    """Inside the resolve transaction: a resolution with a corrected severity is a training sample."""
    if corrected_severity not in SEVERITIES:
        return
    _add_sample(session, incident, "resolution", corrected_severity, None, actor)


def pending_samples() -> int:
    with read_session() as session:
        return int(session.scalar(select(func.count()).select_from(TrainingSample)
                                  .where(TrainingSample.consumed_by.is_(None))) or 0)


def sample_to_dict(sample: TrainingSample) -> dict[str, Any]:
    return {
        "id": sample.id,
        "incident_id": sample.incident_id,
        "origin": sample.origin,
        "severity": sample.severity,
        "category": sample.category,
        "predicted_severity": sample.predicted_severity,
        "predicted_category": sample.predicted_category,
        "model_version": sample.model_version,
        "created_by": sample.created_by,
        "created_at": iso(sample.created_at),
        "consumed_by": sample.consumed_by,
    }
