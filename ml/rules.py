"""The transparent rules classifier: the mapped source severity, and a category from the event's
own fields or keywords. Used until a trained model is active; its confidence says how sure it is."""

from __future__ import annotations

from typing import Sequence

from app.domain.severity import map_source_severity
from ml.interface import ClassifierInput, Prediction

CATEGORY_KEYWORDS: dict[str, tuple[str, ...]] = {
    "security": ("injection", "jailbreak", "leak", "exfiltrat", "pii", "unauthori", "privilege", "malicious",
                 "violation", "credential", "attack"),
    "performance": ("latency", "slow", "p95", "p99", "throughput", "timeout", "saturat"),
    "availability": ("outage", "down", "unavailable", "5xx", "error rate", "rate limit", "quota", "unreachable"),
    "cost": ("cost", "spend", "budget", "token usage", "billing"),
    "quality": ("drift", "hallucinat", "accuracy", "toxicity", "quality", "regression"),
    "infrastructure": ("gpu", "oom", "memory", "cpu", "disk", "node", "pod", "kubernetes", "cuda"),
    "compliance": ("gdpr", "hipaa", "soc2", "audit", "retention", "compliance"),
}


class RulesClassifier:
    version = "rules-1"

    def predict_batch(self, items: Sequence[ClassifierInput]) -> list[Prediction]:
        return [self._predict(item) for item in items]

    def _predict(self, item: ClassifierInput) -> Prediction:
        severity = map_source_severity(item.source_severity)
        known = (item.source_severity or "").lower() in (
            "critical", "error", "high", "warning", "medium", "low", "info", "p0", "p1", "p2", "p3", "p4")
        if item.category:
            category, category_confidence = item.category.lower(), 0.9
        else:
            text = f"{item.title} {item.description} {item.event_type or ''}".lower()
            scores = {c: sum(1 for k in words if k in text) for c, words in CATEGORY_KEYWORDS.items()}
            best = max(scores, key=lambda c: scores[c])
            if scores[best]:
                category, category_confidence = best, min(0.85, 0.5 + 0.15 * scores[best])
            else:
                category, category_confidence = "other", 0.3
        return Prediction(
            severity=severity, category=category, confidence=0.75 if known else 0.4,
            category_confidence=category_confidence, model_version=self.version,
        )
