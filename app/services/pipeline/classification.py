"""Classification stage: one `predict_batch` call through `ml.interface.get_classifier()`.

The incident's severity becomes the predicted one when its confidence reaches
`ml.confidence_threshold` and the event is grounded (`ml.interface.model_decides`),
else the mapped source severity stands (CONTRACT decision 6). The category is the event's own
when it gave one, else the predicted one."""

from __future__ import annotations

import logging
import time

from app import metrics
from app.config import Settings, get_settings
from app.services.pipeline.batch import Batch
from ml.interface import ClassifierInput, get_classifier, model_decides

log = logging.getLogger(__name__)


def classify(batch: Batch, settings: Settings | None = None) -> Batch:
    """Add `classification[incident_id]` = severity, category, predicted_*, confidence, model_version."""
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
            }
        return batch
    classifier = get_classifier()
    inputs = [
        ClassifierInput(
            title=s["title"], description=s["description"], source=s["source"], event_type=s["event_type"],
            category=s["category"], resource_type=s["resource_type"], source_severity=s["source_severity"],
            tags=s["tags"], metrics=s["metrics"],
        )
        for s in incidents
    ]
    predictions = classifier.predict_batch(inputs)
    if len(predictions) != len(inputs):
        raise RuntimeError(f"classifier {classifier.version} answered {len(predictions)} predictions "
                           f"for {len(inputs)} inputs")
    threshold = settings.ml.confidence_threshold
    for snap, prediction in zip(incidents, predictions, strict=True):
        confident = model_decides(prediction, threshold)
        batch["classification"][snap["id"]] = {
            "severity": prediction.severity if confident else snap["severity"],
            "category": snap["category"] or prediction.category,
            "predicted_severity": prediction.severity,
            "predicted_category": prediction.category,
            "confidence": round(float(prediction.confidence), 4),
            "category_confidence": round(float(prediction.category_confidence), 4),
            "model_version": prediction.model_version,
        }
    metrics.PROCESSING_DURATION.labels(stage="classify").observe(time.perf_counter() - started)
    return batch
