"""The one interface the pipeline classifies through.

`get_classifier()` answers the active trained model when one is registered (ml.registry), else
the transparent rules classifier. Batch prediction is the normal path."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple, Protocol, Sequence


@dataclass(frozen=True)
class ClassifierInput:
    title: str
    description: str = ""
    source: str = ""
    event_type: str | None = None
    category: str | None = None
    resource_type: str | None = None
    source_severity: str | None = None
    tags: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)


class Prediction(NamedTuple):
    """One event's classification. A named tuple (immutable, attributes by name) rather than a frozen
    dataclass: batches build one per event, and a tuple is built in a third of the time."""

    severity: str  # P0..P4
    category: str
    confidence: float  # confidence of the severity prediction, 0..1
    category_confidence: float
    model_version: str
    probabilities: Mapping[str, float] = MappingProxyType({})  # severity -> probability
    # The event is like what the model learnt from: it carried a metric the model knows, or it is
    # of an event type the model learnt from without metrics (app.domain.severity.model_may_decide).
    grounded: bool = True


class Classifier(Protocol):
    version: str

    def predict_batch(self, items: Sequence[ClassifierInput]) -> list[Prediction]: ...


def get_classifier() -> Classifier:
    """The active trained model, or the rules classifier while none is present."""
    try:
        from ml.registry import load_active_classifier  # provided by the ML package when built
    except ImportError:
        load_active_classifier = None  # type: ignore[assignment]
    if load_active_classifier is not None:
        model = load_active_classifier()
        if model is not None:
            return model
    from ml.rules import RulesClassifier

    return RulesClassifier()
