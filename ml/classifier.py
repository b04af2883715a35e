"""The ensemble classifier: severity (P0–P4) and category, with calibrated confidence.

Each target has a soft-voting ensemble of three different learners over the two feature views
(`ml.features`):

* multinomial logistic regression on the sparse view (text, one-hot, scaled metrics);
* complement naive Bayes on the sparse view (robust on short texts and small classes);
* histogram gradient boosting on the dense view (thresholds on raw metrics, interactions with the
  environment tag and the qualifier keywords; missing metrics handled natively). Versions trained
  before it have a random forest there; they still load and predict.

Voting and calibration in one step: a plain average of the members' probabilities is neither the
best vote nor a probability one can threshold on, so the training fits the members on 80 % of the
training data, predicts the held-back 20 %, and fits a multinomial logistic meta-learner on the
members' log-probabilities side by side (a learnt soft vote — stacking — whose output is calibrated
the way Platt/matrix scaling calibrates). The members are then refitted on all the training data;
prediction is `meta(log p_logreg, log p_nb, log p_boosting)`. `confidence` is the calibrated probability of
the predicted severity, which is what `ml.confidence_threshold` is compared with.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Mapping, Sequence

import numpy as np
import sklearn
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import ComplementNB
from threadpoolctl import threadpool_limits

from ml import metrics as ml_metrics
from ml.features import FeatureExtractor, FeatureViews
from ml.interface import ClassifierInput, Prediction

log = logging.getLogger(__name__)

EPS = 1e-6
CALIBRATION_SHARE = 0.2


@dataclass
class Member:
    """One learner of the ensemble: which view it reads and its vote weight."""

    name: str
    view: str  # "sparse" or "dense"
    weight: float
    estimator: Any = None


def _new_member(name: str, weight: float, seed: int, categorical_mask: np.ndarray | None) -> Member:
    if name == "logreg":
        return Member(name, "sparse", weight, LogisticRegression(C=16.0, max_iter=2000, solver="lbfgs"))
    if name == "complement_nb":
        return Member(name, "sparse", weight, ComplementNB(alpha=0.3))
    if name == "gradient_boosting":
        # Boosting rather than the 60-tree random forest of earlier versions: over 8 seeds on the
        # shipped data, better held-out macro-F1 (0.867 vs 0.863), log loss (0.346 vs 0.357) and
        # calibration error (0.014 vs 0.016), and 100 trees of 31 leaves take half the forest's
        # prediction time (1,200 node visits per event). No early stopping: it would switch itself on
        # above 10,000 rows (feedback samples count thrice) and hold out a random tenth.
        return Member(name, "dense", weight, HistGradientBoostingClassifier(
            max_iter=20, max_leaf_nodes=31, learning_rate=0.25, early_stopping=False, random_state=seed))
    raise ValueError(f"unknown ensemble member {name!r}")


def _softmax(scores: np.ndarray) -> np.ndarray:
    scores = scores - scores.max(axis=1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=1, keepdims=True)
    return scores


def fast_predict_proba(estimator: Any, X: Any) -> np.ndarray:
    """`estimator.predict_proba(X)` for the fitted members, without scikit-learn's per-call input
    validation and (for the forest) its joblib dispatch, which cost milliseconds per call and made
    single-event classification slow. Same arithmetic; a unit test checks it against predict_proba."""
    if isinstance(estimator, LogisticRegression) and len(estimator.classes_) > 2:
        return _softmax(np.asarray(X @ estimator.coef_.T, dtype=np.float64) + estimator.intercept_)
    if isinstance(estimator, ComplementNB) and len(estimator.classes_) > 1:
        return _softmax(np.asarray(X @ estimator.feature_log_prob_.T, dtype=np.float64))
    if isinstance(estimator, HistGradientBoostingClassifier) and estimator.n_trees_per_iteration_ > 1:
        try:
            return _softmax(_boosting_scores(estimator, X))
        except (AttributeError, TypeError, ValueError):  # scikit-learn changed its internals
            _warn_boosting_fallback()
            return np.asarray(estimator.predict_proba(X))
    if isinstance(estimator, RandomForestClassifier) and estimator.n_outputs_ == 1:  # versions before boosting
        dense = np.ascontiguousarray(X, dtype=np.float32)
        total = np.zeros((dense.shape[0], estimator.n_classes_), dtype=np.float64)
        for tree in estimator.estimators_:
            values = tree.tree_.predict(dense)
            total += values.reshape(dense.shape[0], -1)[:, : estimator.n_classes_]
        return total / len(estimator.estimators_)
    return np.asarray(estimator.predict_proba(X))


@functools.lru_cache(maxsize=1)
def _warn_boosting_fallback() -> None:
    log.warning("gradient boosting fast path unavailable with scikit-learn %s; using predict_proba",
                sklearn.__version__)


def _boosting_scores(estimator: HistGradientBoostingClassifier, X: Any) -> np.ndarray:
    """The boosting's raw class scores, as its `_raw_predict` sums them, tree by tree on one thread:
    its own predict re-validates the input and starts an OpenMP team for every tree."""
    data = np.ascontiguousarray(X, dtype=np.float64)
    scores = np.empty((data.shape[0], estimator.n_trees_per_iteration_), dtype=np.float64, order="F")
    scores[:] = estimator._baseline_prediction
    known_categories, feature_map = estimator._bin_mapper.make_known_categories_bitsets()
    for trees in estimator._predictors:
        for k, tree in enumerate(trees):
            scores[:, k] += tree.predict(data, known_categories, feature_map, 1)
    return scores


class SparseMembers:
    """The linear members of both ensembles (logistic regressions, complement naive Bayes) as one
    weight matrix per dtype, so a batch takes one or two sparse products instead of one per member:
    the cost of a product is per stored feature value, hardly per output column. Each member's
    columns are exactly what `fast_predict_proba` computes for it (same dtype, same sums in the same
    order; a unit test checks it)."""

    def __init__(self, estimators: Sequence[Any]) -> None:
        blocks: dict[np.dtype[Any], list[tuple[int, np.ndarray, np.ndarray | None]]] = {}
        for estimator in estimators:
            if isinstance(estimator, LogisticRegression) and len(estimator.classes_) > 2:
                block, bias = estimator.coef_.T, estimator.intercept_
            elif isinstance(estimator, ComplementNB) and len(estimator.classes_) > 1:
                block, bias = estimator.feature_log_prob_.T, None
            else:
                continue
            blocks.setdefault(block.dtype, []).append((id(estimator), block, bias))
        # Per dtype: the weights side by side and each member's (key, first column, last column, bias).
        self.groups: list[tuple[np.ndarray, list[tuple[int, int, int, np.ndarray | None]]]] = []
        for members in blocks.values():
            spans, start = [], 0
            for key, block, bias in members:
                spans.append((key, start, start + block.shape[1], bias))
                start += block.shape[1]
            self.groups.append((np.ascontiguousarray(np.hstack([block for _, block, _ in members])), spans))

    def probabilities(self, X: Any) -> dict[int, np.ndarray]:
        """Each member's class probabilities on `X`, by `id()` of its estimator."""
        result = {}
        for weights, spans in self.groups:
            scores = np.asarray(X @ weights, dtype=np.float64)
            for key, start, stop, bias in spans:
                result[key] = _softmax(scores[:, start:stop] if bias is None else scores[:, start:stop] + bias)
        return result


class SoftVotingEnsemble:
    """Weighted average of the members' class probabilities over a fixed class order."""

    def __init__(self, members: Sequence[tuple[str, float]], classes: Sequence[str] | np.ndarray, seed: int = 0,
                 categorical_mask: np.ndarray | None = None) -> None:
        self.spec = list(members)
        self.categorical_mask = categorical_mask
        self.classes_ = np.array(list(classes))
        self.seed = seed
        self.members: list[Member] = []

    def fit(self, views: FeatureViews, y: np.ndarray, sample_weight: np.ndarray | None = None) -> "SoftVotingEnsemble":
        if sample_weight is not None and np.array_equal(sample_weight, np.round(sample_weight)):
            # Integer weights as repeated rows: the same fit, and the trees' binning stays on its fast
            # unweighted path (weighted percentiles made it 20x slower).
            index = np.repeat(np.arange(len(y)), sample_weight.astype(np.int64))
            views, y, sample_weight = _rows(views, index), np.asarray(y)[index], None
        self.members = []
        for name, weight in self.spec:
            member = _new_member(name, weight, self.seed, self.categorical_mask)
            member.estimator.fit(getattr(views, member.view), y, sample_weight=sample_weight)
            self.members.append(member)
        return self

    def _member_probabilities(self, views: FeatureViews, known: Mapping[int, np.ndarray] | None = None
                              ) -> list[np.ndarray]:
        """Each member's probabilities over the ensemble's class order (0 for classes it never saw);
        `known`: members' probabilities already computed (`SparseMembers`), by `id()` of the estimator."""
        position = {c: j for j, c in enumerate(self.classes_)}
        result = []
        for member in self.members:
            probabilities = np.zeros((views.sparse.shape[0], len(self.classes_)), dtype=np.float64)
            columns = [position[c] for c in member.estimator.classes_]
            computed = known.get(id(member.estimator)) if known else None
            probabilities[:, columns] = (computed if computed is not None
                                         else fast_predict_proba(member.estimator, getattr(views, member.view)))
            result.append(probabilities)
        return result

    def predict_proba(self, views: FeatureViews) -> np.ndarray:
        """The weighted average of the members' probabilities (the plain soft vote)."""
        parts = self._member_probabilities(views)
        total = np.zeros((views.sparse.shape[0], len(self.classes_)), dtype=np.float64)
        for member, probabilities in zip(self.members, parts, strict=True):
            total += member.weight * probabilities
        return total / sum(m.weight for m in self.members)

    def member_log_proba(self, views: FeatureViews, known: Mapping[int, np.ndarray] | None = None) -> np.ndarray:
        """The members' log-probabilities side by side: the meta-learner's input."""
        return np.hstack([np.log(p + EPS) for p in self._member_probabilities(views, known)])


class CalibratedEnsemble:
    """The members' probabilities combined by a multinomial logistic meta-learner fitted on data
    the members did not see: a calibrated, learnt soft vote (stacking)."""

    def __init__(self, members: Sequence[tuple[str, float]], seed: int = 0,
                 categorical_mask: np.ndarray | None = None) -> None:
        self.members = list(members)
        self.seed = seed
        self.categorical_mask = categorical_mask
        self.classes_: np.ndarray = np.array([])
        self.ensemble: SoftVotingEnsemble | None = None
        self.calibrator: LogisticRegression | None = None

    def fit(self, views: FeatureViews, y: Sequence[str],
            sample_weight: np.ndarray | None = None) -> "CalibratedEnsemble":
        labels = np.asarray(y)
        self.classes_ = np.unique(labels)
        weight = np.ones(len(labels)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        fit_index, calibration_index = _calibration_split(labels, self.seed)
        part = SoftVotingEnsemble(self.members, self.classes_, self.seed, self.categorical_mask)
        part.fit(_rows(views, fit_index), labels[fit_index], weight[fit_index])
        held_back = part.member_log_proba(_rows(views, calibration_index))
        self.calibrator = LogisticRegression(C=1.0, max_iter=2000)
        self.calibrator.fit(held_back, labels[calibration_index], sample_weight=weight[calibration_index])
        # The final members see all the data; the meta-learner learnt on slightly smaller members'
        # outputs (as CalibratedClassifierCV(ensemble=False) does), which keeps prediction to one model each.
        self.ensemble = SoftVotingEnsemble(self.members, self.classes_, self.seed, self.categorical_mask)
        self.ensemble.fit(views, labels, weight)
        return self

    def predict_proba(self, views: FeatureViews, known: Mapping[int, np.ndarray] | None = None) -> np.ndarray:
        assert self.ensemble is not None and self.calibrator is not None, "fit() first"
        calibrated = fast_predict_proba(self.calibrator, self.ensemble.member_log_proba(views, known))
        if list(self.calibrator.classes_) != list(self.classes_):  # a class absent from the calibration part
            position = {c: j for j, c in enumerate(self.classes_)}
            aligned = np.zeros((calibrated.shape[0], len(self.classes_)))
            aligned[:, [position[c] for c in self.calibrator.classes_]] = calibrated
            return aligned
        return calibrated


def _rows(views: FeatureViews, index: np.ndarray) -> FeatureViews:
    return FeatureViews(sparse=views.sparse[index], dense=views.dense[index],
                        grounded=None if views.grounded is None else views.grounded[index])


def _calibration_split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split (1 - CALIBRATION_SHARE : CALIBRATION_SHARE); classes too small to split
    stay on the fitting side only."""
    rng = np.random.default_rng(seed)
    fit_parts, calibration_parts = [], []
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        cut = int(round(len(members) * CALIBRATION_SHARE)) if len(members) >= 5 else 0
        calibration_parts.append(members[:cut])
        fit_parts.append(members[cut:])
    return np.sort(np.concatenate(fit_parts)), np.sort(np.concatenate(calibration_parts))


SEVERITY_MEMBERS: tuple[tuple[str, float], ...] = (("logreg", 1.0), ("complement_nb", 0.5), ("gradient_boosting", 1.5))
# The category is in the words: the trees add little there and cost half the training time.
CATEGORY_MEMBERS: tuple[tuple[str, float], ...] = (("logreg", 1.0), ("complement_nb", 1.0))


@dataclass
class IncidentClassifier:
    """A trained model version: features plus the severity and category ensembles.

    Implements the `ml.interface.Classifier` protocol; it is what the registry persists with
    joblib and what `get_classifier()` answers while it is the active version."""

    version: str
    extractor: FeatureExtractor
    severity_model: CalibratedEnsemble
    category_model: CalibratedEnsemble
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def sparse_members(self) -> SparseMembers:
        """Both ensembles' linear members as one `SparseMembers`, built on first use."""
        members = self.__dict__.get("_sparse_members")
        if members is None:
            estimators = [member.estimator for model in (self.severity_model, self.category_model)
                          if model.ensemble is not None for member in model.ensemble.members]
            members = self.__dict__["_sparse_members"] = SparseMembers(estimators)
        return members

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the derived `SparseMembers` (model files keep their format)."""
        return {name: value for name, value in self.__dict__.items() if name != "_sparse_members"}

    def predict_batch(self, items: Sequence[ClassifierInput], record: bool = True) -> list[Prediction]:
        """Predict severity, category and confidence for a batch (the normal path). `record=False`
        (held-out scoring) leaves the prediction metrics alone."""
        if not items:
            return []
        started = time.perf_counter()
        views = self.extractor.transform(items)
        known = self.sparse_members.probabilities(views.sparse)
        severity_p = self.severity_model.predict_proba(views, known)
        category_p = self.category_model.predict_proba(views, known)
        severity_index = severity_p.argmax(axis=1)
        category_index = category_p.argmax(axis=1)
        severity_classes = [str(c) for c in self.severity_model.classes_]
        severities = np.array(severity_classes, dtype=object)[severity_index].tolist()
        categories = np.array([str(c) for c in self.category_model.classes_], dtype=object)[category_index].tolist()
        confidences = severity_p[np.arange(len(items)), severity_index]
        category_confidences = category_p[np.arange(len(items)), category_index]
        # map, not a comprehension: the per-event loop runs in C (this step was ~10 % of a batch).
        probabilities = map(dict, map(zip, repeat(severity_classes), np.round(severity_p, 4).tolist()))
        grounded = views.grounded.tolist() if views.grounded is not None else repeat(True)
        predictions = list(map(Prediction, severities, categories, confidences.tolist(), category_confidences.tolist(),
                               repeat(self.version), probabilities, grounded))
        if record:
            ml_metrics.record_predictions(self.version, severities, confidences)
        log.debug("classified batch", extra={"count": len(items), "model_version": self.version,
                                             "duration_ms": round((time.perf_counter() - started) * 1000, 2)})
        return predictions


def train_classifier(version: str, items: Sequence[ClassifierInput], severities: Sequence[str],
                     categories: Sequence[str], sample_weight: Sequence[float] | None = None,
                     seed: int = 0) -> IncidentClassifier:
    """Fit features and both calibrated ensembles on `items` (labels aligned by position)."""
    if not items:
        raise ValueError("no training data")
    weight = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    # One thread: training runs beside the web process and workers (first start, beat's retrains);
    # the boosting's OpenMP team spins for cores others hold. Measured under load 11 on 2 cores:
    # 303 s with the default team, 52 s with one thread (docs/ml.md, "First start").
    with threadpool_limits(limits=1):
        extractor = FeatureExtractor().fit(items, severities)
        views = extractor.transform(items)
        mask = extractor.categorical_mask
        severity_model = CalibratedEnsemble(SEVERITY_MEMBERS, seed, mask).fit(views, list(severities), weight)
        category_model = CalibratedEnsemble(CATEGORY_MEMBERS, seed, mask).fit(views, list(categories), weight)
    return IncidentClassifier(version=version, extractor=extractor, severity_model=severity_model,
                              category_model=category_model, info={"features": extractor.sizes})
