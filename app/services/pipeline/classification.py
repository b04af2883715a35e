"""Classification stage: the batch's new incidents through the one `classify` use case
(`app.services.classification.classify_events`, shared with `POST /api/v1/ml/classify`).

The severity is the policy's decision (docs/ml.md, "Severity policy": the source's, raised by a
confident model, lowered by one level only for `ml.may_lower` integrations) with its
`severity_reason`. The category is the event's own when it gave one, else the predicted one."""

from __future__ import annotations

import logging
import time

from app import metrics
from app.config import Settings, get_settings
from app.domain.severity import severity_reason
from app.services.classification import classify_events
from app.services.pipeline.batch import Batch
from ml.interface import ClassifierInput

log = logging.getLogger(__name__)


def classify(batch: Batch, settings: Settings | None = None) -> Batch:
    """Add `classification[incident_id]` = severity, severity_reason, category, predicted_*, confidence,
    model_version."""
    settings = settings or get_settings()
    incidents = batch["incidents"]
    if not incidents:
        return batch
    started = time.perf_counter()
    if not settings.enable_ml_classification:
        for snap in incidents:
            batch["classification"][snap["id"]] = {
                "severity": snap["severity"], "category": snap["category"], "predicted_severity": None,
                "predicted_category": None, "confidence": None, "model_version": None,
                "severity_reason": severity_reason("source", source_severity=snap["source_severity"],
                                                   mapped=snap["severity"], why="classification is off"),
            }
        return batch
    inputs = [
        ClassifierInput(
            title=s["title"], description=s["description"], source=s["source"], event_type=s["event_type"],
            category=s["category"], resource_type=s["resource_type"], source_severity=s["source_severity"],
            tags=s["tags"], metrics=s["metrics"],
        )
        for s in incidents
    ]
    _, results = classify_events(inputs, settings)
    for snap, result in zip(incidents, results, strict=True):
        prediction = result.prediction
        batch["classification"][snap["id"]] = {
            "severity": result.severity,
            "severity_reason": result.severity_reason,
            "category": snap["category"] or prediction.category,
            "predicted_severity": prediction.severity,
            "predicted_category": prediction.category,
            "confidence": round(float(prediction.confidence), 4),
            "category_confidence": round(float(prediction.category_confidence), 4),
            "model_version": prediction.model_version,
        }
    metrics.PROCESSING_DURATION.labels(stage="classify").observe(time.perf_counter() - started)
    return batch
