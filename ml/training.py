"""Training: the shipped data set plus people's labels -> a new model version, scored on the held-out
set, activated only when it is not worse than the active one.

* Training data: the `train` rows of `ml/data/incidents.csv` plus every training sample (feedback
  and corrected resolutions; the newest label per incident wins), samples weighted
  `SAMPLE_WEIGHT` times a shipped row (they are real incidents, and few).
* Held-out set: the `test` rows of the shipped data plus every fifth sample (by id), so a model
  that learnt what people corrected scores better than one that did not. The candidate and the
  active model are scored on **the same set at the same time**; the gate compares those two
  numbers (severity macro-F1), not a figure stored when the active model was trained.
"""

from __future__ import annotations

import csv
import fcntl
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from sqlalchemy import func, select, update

from app.adapters.db import read_session, unit_of_work
from app.adapters.ml_models import ModelVersion, TrainingSample
from app.domain.severity import decide_severity, map_source_severity, mapping_knows, model_may_decide
from ml import metrics as ml_metrics
from ml import registry
from ml.classifier import IncidentClassifier, train_classifier
from ml.features import inputs_from_rows
from ml.interface import ClassifierInput
from ml.rules import RulesClassifier

log = logging.getLogger(__name__)

DATA_FILE = Path(__file__).resolve().parent / "data" / "incidents.csv"
SAMPLE_WEIGHT = 3.0
SAMPLE_HELD_OUT_EVERY = 5  # sample ids divisible by this are held out for scoring
CALIBRATION_BINS = 10


class TrainingBusy(RuntimeError):
    """Another process is training right now."""


@dataclass
class LabelledSet:
    inputs: list[ClassifierInput] = field(default_factory=list)
    severities: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    def add(self, item: ClassifierInput, severity: str, category: str, weight: float = 1.0) -> None:
        self.inputs.append(item)
        self.severities.append(severity)
        self.categories.append(category)
        self.weights.append(weight)

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass
class TrainingResult:
    version: str
    activated: bool
    score: float
    active_version: str | None
    active_score: float | None
    training_size: int
    samples: int
    new_samples: int
    seconds: float
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def load_shipped(path: Path = DATA_FILE) -> tuple[LabelledSet, LabelledSet]:
    """The shipped data set as (train, held_out), split by its fixed `split` column."""
    train, held_out = LabelledSet(), LabelledSet()
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row, item in zip(rows, inputs_from_rows(rows), strict=True):
        target = held_out if row["split"] == "test" else train
        target.add(item, row["severity"], row["incident_category"])
    return train, held_out


def known_categories(path: Path = DATA_FILE) -> tuple[str, ...]:
    """The categories a label may take: those of the shipped data set."""
    with path.open(newline="", encoding="utf-8") as handle:
        return tuple(sorted({row["incident_category"] for row in csv.DictReader(handle)}))


def sample_input(features: dict[str, Any]) -> ClassifierInput:
    return inputs_from_rows([features])[0]


def load_samples() -> tuple[list[TrainingSample], list[int]]:
    """The newest sample per incident (and every sample without one), and the ids not yet consumed."""
    with read_session() as session:
        rows = list(session.scalars(select(TrainingSample).order_by(TrainingSample.id)))
    newest: dict[str, TrainingSample] = {}
    loose: list[TrainingSample] = []
    for row in rows:
        if row.incident_id:
            newest[row.incident_id] = row
        else:
            loose.append(row)
    chosen = sorted(list(newest.values()) + loose, key=lambda r: r.id)
    pending = [r.id for r in rows if r.consumed_by is None]
    return chosen, pending


def pending_sample_count() -> int:
    """Samples no model version has been trained on yet."""
    with read_session() as session:
        return int(session.scalar(select(func.count()).select_from(TrainingSample)
                                  .where(TrainingSample.consumed_by.is_(None))) or 0)


def expected_calibration_error(correct: np.ndarray, confidence: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def evaluate(model: Any, data: LabelledSet, threshold: float = 0.7) -> dict[str, Any]:
    """Held-out metrics of any classifier (the ensemble or the rules baseline)."""
    predictions = (model.predict_batch(data.inputs, record=False) if isinstance(model, IncidentClassifier)
                   else model.predict_batch(data.inputs))  # scoring is not serving: no metrics
    severities = [p.severity for p in predictions]
    categories = [p.category for p in predictions]
    confidence = np.array([p.confidence for p in predictions])
    correct = np.array([a == b for a, b in zip(severities, data.severities, strict=True)])
    weight = np.asarray(data.weights, dtype=np.float64) if len(data.weights) == len(data) else None
    confident = np.array([model_may_decide(p.confidence, threshold, p.grounded) for p in predictions], dtype=bool)
    return {
        "held_out_size": len(data),
        "severity_macro_f1": round(float(f1_score(data.severities, severities, average="macro", zero_division=0,
                                                  sample_weight=weight)), 4),
        "severity_accuracy": round(float(accuracy_score(data.severities, severities, sample_weight=weight)), 4),
        "category_macro_f1": round(float(f1_score(data.categories, categories, average="macro", zero_division=0)), 4),
        "category_accuracy": round(float(accuracy_score(data.categories, categories)), 4),
        "severity_f1_per_class": {
            level: round(float(score), 4) for level, score in zip(
                sorted(set(data.severities)),
                f1_score(data.severities, severities, average=None, labels=sorted(set(data.severities)),
                         zero_division=0), strict=True)
        },
        "expected_calibration_error": round(expected_calibration_error(correct, confidence), 4),
        "share_above_threshold": round(float(confident.mean()), 4),
        "accuracy_above_threshold": round(float(correct[confident].mean()), 4) if confident.any() else None,
    }


def evaluate_guide(model: Any, threshold: float = 0.7) -> dict[str, Any]:
    """The second held-out set (`ml.data.guide_examples`): the guide's own example events. Per event
    the prediction and where the severity policy leaves the incident (default mapping, no
    `ml.may_lower`); macro-F1 over six events is a coarse figure, the rows say more."""
    from ml.data.guide_examples import GUIDE_EXAMPLES

    items = [example.item for example in GUIDE_EXAMPLES]
    labels = [example.severity for example in GUIDE_EXAMPLES]
    predictions = (model.predict_batch(items, record=False) if isinstance(model, IncidentClassifier)
                   else model.predict_batch(items))
    rows, decided = [], []
    for example, prediction in zip(GUIDE_EXAMPLES, predictions, strict=True):
        mapped = map_source_severity(example.item.source_severity)
        severity, decided_by, _ = decide_severity(mapped, not mapping_knows(example.item.source_severity),
                                                  prediction.severity, prediction.confidence, threshold, False,
                                                  prediction.grounded)
        decided.append(severity)
        rows.append({"event": example.name, "label": example.severity, "source": mapped,
                     "predicted": prediction.severity, "confidence": round(float(prediction.confidence), 3),
                     "grounded": prediction.grounded, "incident": severity, "decided_by": decided_by})
    predicted = [p.severity for p in predictions]
    return {
        "size": len(items),
        "severity_macro_f1": round(float(f1_score(labels, predicted, average="macro", zero_division=0)), 4),
        "severity_accuracy": round(float(accuracy_score(labels, predicted)), 4),
        "incident_accuracy_after_policy": round(float(accuracy_score(labels, decided)), 4),
        "events": rows,
    }


def build_sets(samples: Sequence[TrainingSample]) -> tuple[LabelledSet, LabelledSet]:
    """Shipped train + samples (weighted) and shipped held-out + every fifth sample."""
    train, held_out = load_shipped()
    train.weights = [1.0] * len(train)
    for sample in samples:
        if not sample.severity or not sample.category:
            continue
        item = sample_input(sample.features)
        if sample.id % SAMPLE_HELD_OUT_EVERY == 0:
            # Scored as heavily as they are learnt: real incidents are what the model is for.
            held_out.add(item, sample.severity, sample.category, SAMPLE_WEIGHT)
        else:
            train.add(item, sample.severity, sample.category, SAMPLE_WEIGHT)
    return train, held_out


@contextmanager
def training_lock() -> Iterator[None]:
    """One training at a time per model directory (shared by every worker that loads models)."""
    directory = registry.model_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".training.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingBusy("a training is already running for this model directory") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _next_version() -> str:
    with read_session() as session:
        count = int(session.scalar(select(func.count()).select_from(ModelVersion)) or 0)
    return f"v{count + 1}-{datetime.now(timezone.utc):%Y%m%d%H%M%S}"


def train_new_version(trigger: str = "manual", actor: str = "system", force: bool = False,
                      seed: int = 0) -> TrainingResult:
    """Train a candidate on everything known, score it and the active model on the same held-out
    set, store it, and activate it when not worse (always with `force`, or when none is active)."""
    from app.config import get_settings

    threshold = get_settings().ml.confidence_threshold
    started = time.perf_counter()
    with training_lock():
        samples, pending = load_samples()
        train, held_out = build_sets(samples)
        version = _next_version()
        log.info("training model", extra={"version": version, "trigger": trigger, "training_size": len(train),
                                          "samples": len(samples), "new_samples": len(pending)})
        model = train_classifier(version, train.inputs, train.severities, train.categories, train.weights, seed)
        candidate_metrics = evaluate(model, held_out, threshold)
        candidate_metrics["rules_baseline_severity_macro_f1"] = evaluate(RulesClassifier(), held_out,
                                                                         threshold)["severity_macro_f1"]
        candidate_metrics["guide_examples"] = evaluate_guide(model, threshold)
        score = candidate_metrics["severity_macro_f1"]
        active_version, active_score = None, None
        active_row = registry.active_version_row()
        if active_row is not None:
            active_version = active_row.version
            try:
                active_model = registry.load_version_file(active_row.file_path, active_row.checksum)
                active_score = evaluate(active_model, held_out, threshold)["severity_macro_f1"]
            except registry.ModelLoadError as exc:
                log.error("active model cannot be loaded; the candidate is compared with nothing",
                          extra={"version": active_version, "error": str(exc)})
        activate = force or active_score is None or score >= active_score
        if activate:
            reason = ("forced" if force and active_score is not None and score < active_score else
                      "no active model" if active_row is None else
                      "active model unloadable" if active_score is None else
                      f"held-out macro-F1 {score:.4f} >= active {active_score:.4f}")
        else:
            reason = f"held-out macro-F1 {score:.4f} < active {active_score:.4f}: kept {active_version}"
        candidate_metrics.update({"trigger": trigger, "compared_with": active_version,
                                  "compared_score": active_score, "gate": reason,
                                  "training_seconds": round(time.perf_counter() - started, 2),
                                  "features": model.info.get("features", {})})
        model.info.update({"metrics": candidate_metrics, "trained_at": datetime.now(timezone.utc).isoformat()})
        registry.store_version(model, training_size=len(train), feedback_samples=len(samples),
                               metrics=candidate_metrics, score=score, actor=actor,
                               notes=None if activate else reason)
        if pending:
            with unit_of_work() as session:
                session.execute(update(TrainingSample).where(TrainingSample.id.in_(pending),
                                                             TrainingSample.consumed_by.is_(None))
                                .values(consumed_by=version))
        if activate:
            registry.activate(version, actor=actor)
    seconds = time.perf_counter() - started
    ml_metrics.TRAININGS.labels("activated" if activate else "rejected").inc()
    result = TrainingResult(version=version, activated=activate, score=score, active_version=active_version,
                            active_score=active_score, training_size=len(train), samples=len(samples),
                            new_samples=len(pending), seconds=round(seconds, 2), reason=reason)
    log.info("model trained", extra=result.as_dict())
    return result


def train_if_due(actor: str = "beat") -> TrainingResult | None:
    """Retrain when `ml.auto_train` is on and at least `ml.training_batch_size` new samples exist."""
    from app.config import get_settings

    settings = get_settings()
    if not (settings.ml.enabled and settings.enable_ml_classification and settings.ml.auto_train):
        return None
    pending = pending_sample_count()
    if pending < max(1, settings.ml.training_batch_size):
        return None
    try:
        return train_new_version(trigger=f"{pending} new samples", actor=actor)
    except TrainingBusy:
        log.info("retrain skipped: another training is running")
        return None


def bootstrap(actor: str = "bootstrap") -> TrainingResult | None:
    """Train and activate the first model from the shipped data when no version exists yet (and ML
    classification is enabled)."""
    from app.config import get_settings

    settings = get_settings()
    if not (settings.ml.enabled and settings.enable_ml_classification):
        return None
    with read_session() as session:
        exists = session.scalar(select(func.count()).select_from(ModelVersion)) or 0
    if exists:
        return None
    try:
        return train_new_version(trigger="bootstrap", actor=actor)
    except TrainingBusy:
        return None


__all__ = ["IncidentClassifier", "LabelledSet", "TrainingBusy", "TrainingResult", "bootstrap", "evaluate",
           "known_categories", "load_shipped", "pending_sample_count", "train_if_due", "train_new_version"]
