"""The shipped data set and the ensemble, without a database: determinism, the held-out score,
calibrated confidence, and robustness of the features to what real events send."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from ml.classifier import IncidentClassifier, train_classifier
from ml.data import generate
from ml.interface import ClassifierInput
from ml.rules import RulesClassifier
from ml.training import DATA_FILE, evaluate, load_shipped


@lru_cache(maxsize=1)
def base_model() -> IncidentClassifier:
    """The ensemble trained on the shipped training split (once per test session)."""
    train, _ = load_shipped()
    return train_classifier("test-base", train.inputs, train.severities, train.categories)


def test_data_set_is_deterministic_large_and_split(tmp_path: Path) -> None:
    regenerated = tmp_path / "incidents.csv"
    generate.write(regenerated)
    assert regenerated.read_bytes() == DATA_FILE.read_bytes(), "the shipped CSV is not what the script generates"
    rows = list(csv.DictReader(DATA_FILE.open()))
    assert len(rows) >= 5000
    splits = {r["split"] for r in rows}
    assert splits == {"train", "test"}
    held_out = sum(r["split"] == "test" for r in rows) / len(rows)
    assert 0.15 < held_out < 0.25
    assert {r["severity"] for r in rows} == {"P0", "P1", "P2", "P3", "P4"}
    kinds = {r["event_type"] for r in rows}
    for kind in ("anomaly", "alert", "prompt_injection", "data_leakage", "policy_violation", "compliance_violation",
                 "manual"):
        assert kind in kinds
    # Every integration's shape, with and without metrics, and no field real senders lack.
    assert {r["source"] for r in rows} == {"llm-sentinel", "llm-shield", "llm-edge-agent", "llm-governance-core",
                                            "alertmanager", "pagerduty", "manual"}
    metric_names = {name for r in rows for name in json.loads(r["metrics"])}
    assert {"p95_latency_ms", "threshold_ms", "baseline_ms", "current_rpm", "limit_rpm", "throttled_requests",
            "confidence_score", "attack_vectors", "error_rate"} <= metric_names
    assert not {"impact_score", "anomaly_score"} & metric_names
    assert all(r["metrics"] == "{}" for r in rows if r["source"] in ("alertmanager", "pagerduty", "manual"))


def test_held_out_macro_f1_for_severity_is_at_least_085_and_beats_the_rules() -> None:
    _, held_out = load_shipped()
    model_metrics = evaluate(base_model(), held_out)
    rules_metrics = evaluate(RulesClassifier(), held_out)
    assert model_metrics["severity_macro_f1"] >= 0.85, model_metrics
    assert model_metrics["category_macro_f1"] >= 0.9, model_metrics
    # The model adds to what the sources say: their own severity, mapped by the rules, is behind.
    assert rules_metrics["severity_macro_f1"] < model_metrics["severity_macro_f1"] - 0.03, rules_metrics
    # Calibrated: the confidence means what it says (expected calibration error under 5 points),
    # and what clears the 0.7 threshold is right more often than the whole.
    assert model_metrics["expected_calibration_error"] < 0.05, model_metrics
    assert model_metrics["accuracy_above_threshold"] > model_metrics["severity_accuracy"]


def test_predictions_are_probabilities_with_the_version() -> None:
    _, held_out = load_shipped()
    predictions = base_model().predict_batch(held_out.inputs[:50])
    assert len(predictions) == 50
    for prediction in predictions:
        assert prediction.model_version == "test-base"
        assert prediction.severity in ("P0", "P1", "P2", "P3", "P4")
        assert 0.0 <= prediction.confidence <= 1.0 and 0.0 <= prediction.category_confidence <= 1.0
        assert math.isclose(sum(prediction.probabilities.values()), 1.0, abs_tol=1e-3)
        assert prediction.confidence == pytest.approx(max(prediction.probabilities.values()), abs=1e-3)
    assert base_model().predict_batch([]) == []


def test_unseen_values_and_odd_metrics_do_not_break_prediction() -> None:
    odd = [
        ClassifierInput(title="x"),
        ClassifierInput(title="Totally new thing 🚀", description="", source="brand-new-source", event_type="novel",
                        category="unheard", resource_type="quantum", source_severity="apocalyptic",
                        tags={"environment": "moon", "nested": "a" * 500, "flag": True, "n": 3},
                        metrics={"latency_p99_ms": float("inf"), "error_rate": float("nan"), "text": "high",
                                 "ok": True, "never_seen_metric": 12.0, "impact_score": -0.5}),
    ]
    predictions = base_model().predict_batch(odd)
    assert [p.model_version for p in predictions] == ["test-base", "test-base"]
    assert all(np.isfinite(p.confidence) for p in predictions)


def test_text_qualifiers_and_measurements_move_the_severity() -> None:
    """What a person would say: a confirmed, wide, production incident is more severe than a
    suspected, tiny, staging one of the same kind."""
    big = ClassifierInput(
        title="Data Leakage Detected", description="Responses of support-bot contain customer PII (confirmed)",
        source="llm-shield", event_type="data_leakage", resource_type="model", source_severity="medium",
        tags={"environment": "production"},
        metrics={"records_exposed": 40000.0, "pii_matches": 250.0, "confidence_score": 0.99})
    small = ClassifierInput(
        title="Data Leakage Detected", description="Responses of support-bot contain customer PII (suspected)",
        source="llm-shield", event_type="data_leakage", resource_type="model", source_severity="medium",
        tags={"environment": "staging"},
        metrics={"records_exposed": 1.0, "pii_matches": 1.0, "confidence_score": 0.6})
    severe, mild = base_model().predict_batch([big, small])
    assert severe.severity in ("P0", "P1")  # above what the source said (medium: P2)
    assert int(mild.severity[1]) - int(severe.severity[1]) >= 2, (severe, mild)
    assert severe.category == mild.category == "security"


def test_a_metric_is_read_against_its_own_threshold() -> None:
    """The same p95 latency is 4.4 times a 500 ms threshold and just past a 2,000 ms one: the first
    is the more severe, although nothing differs but the threshold (and the baseline with it)."""
    def latency(threshold: float) -> ClassifierInput:
        return replace(GUIDE_SENTINEL, source_severity="low",
                       metrics={"p95_latency_ms": 2200, "threshold_ms": threshold, "baseline_ms": threshold / 2,
                                "duration_sec": 600, "affected_requests": 3000})

    far, near = base_model().predict_batch([latency(500), latency(2000)])
    assert int(near.severity[1]) - int(far.severity[1]) >= 1, (far, near)


def test_fast_prediction_path_matches_scikit_learn() -> None:
    """On the whole shipped data set (training and held-out rows)."""
    from ml.classifier import fast_predict_proba

    model = base_model()
    train, held_out = load_shipped()
    views = model.extractor.transform(train.inputs + held_out.inputs)
    for ensemble in (model.severity_model, model.category_model):
        assert ensemble.ensemble is not None and ensemble.calibrator is not None
        for member in ensemble.ensemble.members:
            matrix = getattr(views, member.view)
            np.testing.assert_allclose(fast_predict_proba(member.estimator, matrix),
                                       member.estimator.predict_proba(matrix), atol=1e-5)
        stacked = ensemble.ensemble.member_log_proba(views)
        np.testing.assert_allclose(fast_predict_proba(ensemble.calibrator, stacked),
                                   ensemble.calibrator.predict_proba(stacked), atol=1e-6)


def test_boosting_falls_back_to_predict_proba_when_scikit_learn_internals_change(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The boosting's fast path reads scikit-learn's private tree list; a release that renames it
    must cost speed, not predictions."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    import ml.classifier as classifier

    model = base_model()
    _, held_out = load_shipped()
    views = model.extractor.transform(held_out.inputs[:200])
    members = [m for m in model.severity_model.ensemble.members  # type: ignore[union-attr]
               if isinstance(m.estimator, HistGradientBoostingClassifier)]
    assert members
    member = members[0]
    matrix = getattr(views, member.view)

    def renamed(estimator, X):  # type: ignore[no-untyped-def]
        raise AttributeError("'HistGradientBoostingClassifier' object has no attribute '_predictors'")

    monkeypatch.setattr(classifier, "_boosting_scores", renamed)
    classifier._warn_boosting_fallback.cache_clear()
    with caplog.at_level("WARNING", logger="ml.classifier"):
        np.testing.assert_allclose(classifier.fast_predict_proba(member.estimator, matrix),
                                   member.estimator.predict_proba(matrix))
        assert len(model.predict_batch(held_out.inputs[:50])) == 50
    assert sum("fast path unavailable" in r.getMessage() for r in caplog.records) == 1  # said once


GUIDE_SENTINEL = ClassifierInput(  # integration guide §2, as the pipeline hands it to the classifier
    title="Latency Spike Detected", description="95th percentile latency exceeded threshold by 270%",
    source="llm-sentinel", event_type="anomaly", category="performance", resource_type="endpoint",
    source_severity="high", tags={"environment": "production", "tenant_id": "tenant-123"},
    metrics={"p95_latency_ms": 5400, "threshold_ms": 2000, "baseline_ms": 800, "duration_sec": 300,
             "affected_requests": 1234})


UNLIKE = ClassifierInput(  # a kind of event no training row has: none of its metrics, a new event type
    title="Quantum decoherence in tensor cores", source="llm-sentinel", event_type="decoherence",
    source_severity="low", metrics={"qubit_error_ppm": 900.0})


def test_an_event_unlike_the_training_data_keeps_its_source_severity() -> None:
    """The guide's Sentinel event is like the training data (its metrics are the guide's): the
    model may decide. An event with no known metric, of a type never learnt without metrics, is
    not: its confidence is an extrapolation, and the policy keeps the source's severity."""
    from app.domain.severity import decide_severity, model_may_decide

    like, unlike = base_model().predict_batch([GUIDE_SENTINEL, UNLIKE])
    assert like.grounded and model_may_decide(like.confidence, 0.0, like.grounded)
    assert model_may_decide(like.confidence, 0.7, like.grounded) == (like.confidence >= 0.7)
    assert not unlike.grounded and not model_may_decide(unlike.confidence, 0.0, unlike.grounded)
    assert decide_severity("P3", False, "P0", 0.99, 0.7, False, unlike.grounded)[:2] == ("P3", "source")


def test_event_types_learnt_without_metrics_are_grounded_without_them() -> None:
    """Five metric-less training rows of an event type (e.g. feedback on manual reports of a new
    pattern) ground such events; four do not, and other types stay ungrounded."""
    from dataclasses import replace

    from ml.features import FeatureExtractor

    train, _ = load_shipped()
    report = ClassifierInput(title="Model weights checksum mismatch", source="manual",
                             event_type="weights_tampering", source_severity="low")
    for rows, expected in ((4, False), (5, True)):
        extractor = FeatureExtractor().fit(train.inputs + [report] * rows)
        views = extractor.transform([report, replace(UNLIKE, event_type="anomaly"), UNLIKE, GUIDE_SENTINEL])
        assert views.grounded is not None
        assert views.grounded.tolist() == [expected, False, False, True]


def test_shared_sparse_product_is_each_members_own_arithmetic() -> None:
    """`SparseMembers` (one product for the linear members of both ensembles) gives each member
    exactly what `fast_predict_proba` gives it, so predict_batch is the member-by-member path."""
    from ml.classifier import SparseMembers, fast_predict_proba

    model = base_model()
    _, held_out = load_shipped()
    views = model.extractor.transform(held_out.inputs)
    linear = [member.estimator for ensemble in (model.severity_model, model.category_model)
              if ensemble.ensemble is not None for member in ensemble.ensemble.members if member.view == "sparse"]
    shared = SparseMembers(linear).probabilities(views.sparse)
    assert set(shared) == {id(estimator) for estimator in linear} and len(linear) == 4
    for estimator in linear:
        np.testing.assert_array_equal(shared[id(estimator)], fast_predict_proba(estimator, views.sparse))
    for ensemble in (model.severity_model, model.category_model):
        np.testing.assert_array_equal(ensemble.predict_proba(views, shared), ensemble.predict_proba(views))


def test_a_version_with_a_random_forest_member_still_predicts() -> None:
    """Versions trained before the boosting member hold a random forest there: their files must
    keep loading and serving (a rollback may go back to one)."""
    import pickle

    from sklearn.ensemble import RandomForestClassifier

    from ml.classifier import fast_predict_proba

    train, held_out = load_shipped()
    model = pickle.loads(pickle.dumps(base_model()))
    assert model.severity_model.ensemble is not None
    member = model.severity_model.ensemble.members[-1]
    assert member.view == "dense"
    member.name, member.estimator = "random_forest", RandomForestClassifier(
        n_estimators=10, max_features=0.3, random_state=0, n_jobs=1).fit(
        model.extractor.transform(train.inputs).dense, train.severities)
    restored = pickle.loads(pickle.dumps(model))
    dense = restored.extractor.transform(held_out.inputs).dense
    forest = restored.severity_model.ensemble.members[-1].estimator
    np.testing.assert_allclose(fast_predict_proba(forest, dense), forest.predict_proba(dense), atol=1e-12)
    predictions = restored.predict_batch(held_out.inputs[:100], record=False)
    assert len(predictions) == 100 and all(p.model_version == "test-base" for p in predictions)
    assert all(math.isclose(sum(p.probabilities.values()), 1.0, abs_tol=1e-3) for p in predictions)
    # The calibrator learnt the boosting's outputs, not this forest's: other predictions, same path.
    assert [p.confidence for p in predictions] != [p.confidence for p in base_model().predict_batch(
        held_out.inputs[:100], record=False)]


def test_model_files_do_not_carry_the_shared_sparse_product() -> None:
    import pickle

    model = base_model()
    model.predict_batch(load_shipped()[1].inputs[:10], record=False)  # builds it
    assert "_sparse_members" in model.__dict__
    assert "_sparse_members" not in pickle.loads(pickle.dumps(model)).__dict__


def test_batched_confidence_histogram_counts_like_observe() -> None:
    from prometheus_client import REGISTRY, Histogram

    from ml import metrics as ml_metrics

    values = np.array([0.05, 0.1, 0.1000001, 0.69, 0.7, 0.95, 0.99, 1.0, 0.5])
    ml_metrics.record_predictions("hist-check", ["P0"] * 5 + ["P2"] * 4, values)
    reference = Histogram("ml_hist_reference", "reference", buckets=ml_metrics.CONFIDENCE_BUCKETS, registry=None)
    for value in values:
        reference.observe(value)
    expected = {s.labels["le"]: s.value for s in reference.collect()[0].samples if s.name.endswith("_bucket")}
    for bound, count in expected.items():
        got = REGISTRY.get_sample_value("incident_manager_ml_prediction_confidence_bucket",
                                        {"model_version": "hist-check", "le": bound})
        assert got == count, bound
    assert REGISTRY.get_sample_value("incident_manager_ml_predictions_total",
                                     {"model_version": "hist-check", "severity": "P2"}) == 4
