"""The one `classify` use case: events in, the classifier's prediction and the severity the policy
decides out. The pipeline's classification stage and `POST /api/v1/ml/classify` both call it, so
they cannot disagree (docs/ml.md, "Severity policy").

The mapped source severity is computed here, with the event's own integration mapping (the one
ingest used); the decision is `app.domain.severity.decide_severity`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from app.config import Settings, get_settings
from app.domain.severity import decide_severity, map_source_severity, mapping_knows, severity_reason
from ml.interface import ClassifierInput, Prediction, get_classifier

# The rules classifier (no trained model active) repeats the default mapping; it has no opinion of its own.
RULES_VERSION_PREFIX = "rules-"


@dataclass(frozen=True)
class Classified:
    """One event's classification and the policy's decision."""

    prediction: Prediction
    severity: str
    mapped_source_severity: str
    severity_reason: dict[str, Any]


def may_lower(source: str, settings: Settings) -> bool:
    """Whether `ml.may_lower` lists the event's integration (by its source or integration name)."""
    allowed = settings.ml.may_lower
    return bool(allowed) and (source in allowed or settings.integration(source).name in allowed)


def classify_events(items: Sequence[ClassifierInput], settings: Settings | None = None) -> tuple[str, list[Classified]]:
    """Classify a batch and decide each severity: `(classifier version, [Classified])`.

    Severity starts as the source's, mapped by its integration's `severity_mapping`; a confident,
    grounded prediction may raise it, and lower it by one level only for `ml.may_lower` sources."""
    settings = settings or get_settings()
    classifier = get_classifier()
    predictions = classifier.predict_batch(items)
    if len(predictions) != len(items):
        raise RuntimeError(f"classifier {classifier.version} answered {len(predictions)} predictions "
                           f"for {len(items)} inputs")
    threshold = settings.ml.confidence_threshold
    has_opinion = not classifier.version.startswith(RULES_VERSION_PREFIX)
    # Batches repeat a few (source, source severity, prediction, confident?) combinations: each is
    # decided once, and each event's reason is that decision's with its own confidence.
    decisions: dict[tuple[Any, ...], tuple[str, str, dict[str, Any]]] = {}
    results = []
    for item, prediction in zip(items, predictions, strict=True):
        confidence = round(float(prediction.confidence), 4)
        key = (item.source, item.source_severity, prediction.severity, prediction.model_version,
               confidence >= threshold, prediction.grounded)
        decision = decisions.get(key)
        if decision is None:
            mapping = settings.integration(item.source).severity_mapping
            mapped = map_source_severity(item.source_severity, mapping)
            severity, decided_by, why = decide_severity(
                mapped, not mapping_knows(item.source_severity, mapping),
                prediction.severity if has_opinion else None, confidence, threshold,
                may_lower(item.source, settings), prediction.grounded)
            decision = decisions[key] = (mapped, severity, severity_reason(
                decided_by, source_severity=item.source_severity, mapped=mapped, predicted=prediction.severity,
                model_version=prediction.model_version, why=why))
        mapped, severity, reason = decision
        results.append(Classified(prediction, severity, mapped, {**reason, "confidence": confidence}))
    return classifier.version, results
