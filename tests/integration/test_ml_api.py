"""The ML doors on real Postgres/Redis: classify, models, feedback (and its bad input), and the
feedback loop closed by beat on a real `ml` worker: corrected labels for a new pattern change the
prediction after the retraining."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import func, select

from app.adapters.db import read_session
from app.adapters.ml_models import ModelVersion, TrainingSample
from app.adapters.models import TimelineEntry
from app.domain.severity import SEVERITIES
from ml import registry
from tests.conftest import wait_for
from tests.unit.test_ml_model import base_model

GPU_EVENT = {
    "title": "GPU out of memory on h100-sxm node serving llama-3-70b", "source": "edge-agent",
    "event_type": "gpu_oom", "severity": "high", "resource": {"type": "gpu_node", "id": "node-7"},
    "tags": {"environment": "production", "tier": "1"},
    "metrics": {"oom_kills": 40.0, "pods_restarting": 20.0, "gpu_memory_used_pct": 99.5, "threshold_pct": 90.0},
}
NEW_PATTERN = {
    "title": "Model weights checksum mismatch on replica 99", "source": "manual", "severity": "low",
    "event_type": "weights_tampering", "category": "weights_tampering",
    "description": "Signed model artifact does not match the registry; possible supply-chain tampering.",
}


@pytest.fixture
def served(db: None) -> Iterator[str]:
    """The session's base model stored and active (no training)."""
    registry.reset_cache()
    model = copy.copy(base_model())
    model.version = "base"
    registry.store_version(model, training_size=8000, feedback_samples=0, metrics={"severity_macro_f1": 0.86},
                           score=0.86, actor="test")
    registry.activate("base")
    yield "base"
    registry.reset_cache()


def samples() -> int:
    with read_session() as session:
        return int(session.scalar(select(func.count()).select_from(TrainingSample)) or 0)


def new_incident(client: Any, key: str, title: str, **extra: Any) -> str:
    body = {"title": title, "severity": "low", "source": "manual", **extra}
    response = client.post("/api/v1/incidents", json=body, headers={"X-API-Key": key})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def test_classify_one_and_many_with_confidence_and_version(client: Any, make_key: Callable[..., str],
                                                           served: str) -> None:
    key = make_key("event:create")
    one = client.post("/api/v1/ml/classify", json=GPU_EVENT, headers={"X-API-Key": key})
    assert one.status_code == 200, one.get_json()
    body = one.get_json()
    assert body["model_version"] == "base" and body["confidence_threshold"] == 0.7
    [prediction] = body["predictions"]
    assert prediction["predicted_severity"] in ("P0", "P1") and prediction["category"] == "infrastructure"
    assert prediction["model_version"] == "base" and 0 <= prediction["confidence"] <= 1
    assert set(prediction["probabilities"]) == {"P0", "P1", "P2", "P3", "P4"}
    expected = prediction["predicted_severity"] if prediction["confidence"] >= 0.7 else "P1"
    assert prediction["severity"] == expected and prediction["mapped_source_severity"] == "P1"  # never lowered

    reader = make_key("incident:read")
    many = client.post("/api/v1/ml/classify", json={"events": [GPU_EVENT, NEW_PATTERN, {"title": "x"}]},
                       headers={"X-API-Key": reader})
    assert many.status_code == 200
    predictions = many.get_json()["predictions"]
    assert len(predictions) == 3 and predictions[0] == prediction
    # Below the threshold the mapped source severity stands, and both are shown.
    # The policy: raised only by a confident, grounded prediction of a higher level; never lowered
    # (no integration is in ml.may_lower); "rule" when the mapping fell back to P3 (no severity sent).
    for p in predictions:
        raised = (p["confidence"] >= 0.7 and p["grounded"]
                  and SEVERITIES.index(p["predicted_severity"]) < SEVERITIES.index(p["mapped_source_severity"]))
        assert p["severity"] == (p["predicted_severity"] if raised else p["mapped_source_severity"])
        assert p["decided_by"] == ("model" if raised else "source" if p["source_severity"] else "rule")
        assert p["severity_reason"]["decided_by"] == p["decided_by"] and p["severity_reason"]["model_version"] == "base"

    # The guide's Sentinel example: none of its metrics is one the model knows, so the source decides.
    guide = json.loads((Path(__file__).parent.parent / "fixtures" / "sentinel-event.json").read_text())
    sentinel = client.post("/api/v1/ml/classify", json=guide, headers={"X-API-Key": reader}).get_json()
    [answer] = sentinel["predictions"]
    assert answer["mapped_source_severity"] == "P1" and answer["severity"] in ("P0", "P1")

    models = client.get("/api/v1/ml/models", headers={"X-API-Key": reader})
    assert models.status_code == 200
    assert models.get_json()["active_version"] == "base" and models.get_json()["serving_version"] == "base"
    assert models.get_json()["items"][0]["metrics"] == {"severity_macro_f1": 0.86}

    from prometheus_client import REGISTRY, generate_latest

    # /metrics shows the multiprocess directory; this pytest process imported prometheus_client
    # before the session set that directory, so its own counters are in its default registry.
    exposition = client.get("/metrics", headers={"X-API-Key": reader}).get_data(as_text=True)
    exposition += generate_latest(REGISTRY).decode()
    assert 'incident_manager_ml_predictions_total{model_version="base"' in exposition
    assert "incident_manager_ml_prediction_confidence_bucket" in exposition


def test_classify_bad_input(client: Any, make_key: Callable[..., str], served: str,
                            test_env: dict[str, str]) -> None:
    key = make_key("event:create")
    headers = {"X-API-Key": key}
    cases = [
        ({"events": []}, 422, "events"),
        ({"events": [GPU_EVENT] * 1001}, 422, "events"),
        ({"events": "nope"}, 422, "events"),
        ({"events": [GPU_EVENT, {"source": "x"}]}, 422, "events"),
        ({"description": "no title"}, 422, "title"),
        ({**GPU_EVENT, "metrics": {"oom_kills": "many"}}, 422, "metrics"),
        ([GPU_EVENT], 422, "_schema"),
    ]
    for body, status, field in cases:
        response = client.post("/api/v1/ml/classify", json=body, headers=headers)
        assert response.status_code == status, (body if len(str(body)) < 300 else field, response.get_json())
        assert field in response.get_json()["error"]["details"]
    assert client.post("/api/v1/ml/classify", data="{", headers={**headers, "Content-Type": "application/json"}
                       ).status_code == 400
    assert client.post("/api/v1/ml/classify", data="title=x", headers=headers).status_code == 415
    assert client.post("/api/v1/ml/classify", json=GPU_EVENT).status_code == 401
    assert client.post("/api/v1/ml/classify", json=GPU_EVENT,
                       headers={"X-API-Key": make_key("incident:write")}).status_code == 403
    writer = {"X-API-Key": make_key("incident:write", "incident:read")}
    assert client.post("/api/v1/ml/models/rollback", headers=writer).status_code == 403
    assert client.post("/api/v1/ml/models/base/activate", headers=writer).status_code == 403
    assert client.post("/api/v1/ml/train", headers=writer).status_code == 403
    admin = {"X-API-Key": make_key("admin")}
    assert client.post("/api/v1/ml/models/nope/activate", headers=admin).status_code == 404
    assert client.post("/api/v1/ml/models/rollback", headers=admin).status_code == 409
    assert client.post("/api/v1/ml/models/base/activate", headers=admin).get_json()["version"] == "base"

    import redis

    broker = redis.Redis.from_url(test_env["CELERY_BROKER_URL"])
    broker.delete("ml")
    queued = client.post("/api/v1/ml/train", headers=admin)
    assert queued.status_code == 202 and queued.get_json()["status"] == "queued"
    assert broker.llen("ml") == 1  # routed to the ml queue; no worker here, so drop it for later tests
    broker.delete("ml")


def test_feedback_is_stored_and_bad_feedback_writes_nothing(client: Any, make_key: Callable[..., str],
                                                            served: str) -> None:
    key = make_key("incident:write", "incident:read")
    headers = {"X-API-Key": key}
    incident_id = new_incident(client, key, "Prompt injection confirmed against support-bot",
                               incident_type="prompt_injection")
    bad = [
        ({"severity": "P9"}, 422, "severity"),
        ({"severity": "critical"}, 422, "severity"),
        ({"category": "weather"}, 422, "category"),
        ({}, 422, "_schema"),
        ({"notes": "only notes"}, 422, "_schema"),
    ]
    for body, status, field in bad:
        response = client.post(f"/api/v1/incidents/{incident_id}/feedback", json=body, headers=headers)
        assert response.status_code == status, (body, response.get_json())
        assert field in response.get_json()["error"]["details"]
    assert client.post("/api/v1/incidents/INC-20200101-00001/feedback", json={"severity": "P1"},
                       headers=headers).status_code == 404
    assert client.post(f"/api/v1/incidents/{incident_id}/feedback", data="severity=P1",
                       headers=headers).status_code == 415
    assert client.post(f"/api/v1/incidents/{incident_id}/feedback", json={"severity": "P1"},
                       headers={"X-API-Key": make_key("incident:read")}).status_code == 403
    assert samples() == 0

    ok = client.post(f"/api/v1/incidents/{incident_id}/feedback", json={"severity": "P0", "notes": "bypass worked"},
                     headers=headers)
    assert ok.status_code == 201, ok.get_json()
    sample = ok.get_json()
    assert sample["severity"] == "P0" and sample["origin"] == "feedback" and sample["pending_samples"] == 1
    assert sample["category"]  # left out: taken from the incident
    with read_session() as session:
        stored = session.scalars(select(TrainingSample)).one()
        assert stored.features["title"] == "Prompt injection confirmed against support-bot"
        kinds = [e.kind for e in session.scalars(select(TimelineEntry).where(TimelineEntry.incident_id == incident_id))]
    assert "classification_feedback" in kinds

    # A resolution with a corrected severity is a training sample too.
    resolved = client.post(f"/api/v1/incidents/{incident_id}/resolve", json={"severity": "P1", "notes": "fixed"},
                           headers=headers)
    assert resolved.status_code == 200
    with read_session() as session:
        origins = sorted(s.origin for s in session.scalars(select(TrainingSample)))
    assert origins == ["feedback", "resolution"]


@pytest.fixture
def fast_retrain(test_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Beat checks every second; retrain after 25 new samples (config.yaml, as operators set it)."""
    from app.config import reset_settings_cache

    config = tmp_path / "config.yaml"
    config.write_text("ml:\n  training_batch_size: 25\n  auto_train: true\n")
    monkeypatch.setenv("CONFIG_FILE", str(config))
    monkeypatch.setenv("ML_RETRAIN_CHECK_SECS", "1")
    reset_settings_cache()
    yield
    monkeypatch.undo()
    reset_settings_cache()


def test_feedback_loop_beat_retrains_on_a_real_worker_and_the_prediction_changes(
        client: Any, make_key: Callable[..., str], served: str, fast_retrain: None,
        start_worker: Callable[..., Any]) -> None:
    key = make_key("incident:write", "incident:read", "event:create")
    headers = {"X-API-Key": key}

    def probe() -> dict[str, Any]:
        registry.invalidate()
        response = client.post("/api/v1/ml/classify", json=NEW_PATTERN, headers=headers)
        assert response.status_code == 200
        return response.get_json()["predictions"][0]

    before = probe()
    assert before["model_version"] == "base" and before["predicted_severity"] != "P0"

    # People mark 25 incidents of a pattern the model never saw (weights tampering) as P0 security:
    # 24 by feedback, one by resolving with a corrected severity.
    ids = [new_incident(client, key, f"Model weights checksum mismatch on replica {i}",
                        incident_type="weights_tampering", description=NEW_PATTERN["description"])
           for i in range(25)]
    for incident_id in ids[:-1]:
        response = client.post(f"/api/v1/incidents/{incident_id}/feedback",
                               json={"severity": "P0", "category": "security"}, headers=headers)
        assert response.status_code == 201
    assert client.post(f"/api/v1/incidents/{ids[-1]}/resolve", json={"severity": "P0"},
                       headers=headers).status_code == 200
    assert samples() == 25

    worker = start_worker(queues="ml", concurrency=1, beat=True)

    def retrained() -> ModelVersion | None:
        """The beat-trained version once the gate decided (a refused one carries its reason)."""
        with read_session() as session:
            row = session.scalars(select(ModelVersion).where(ModelVersion.trained_by == "beat")).first()
        return row if row is not None and (row.active or row.notes) else None

    row = wait_for(retrained, 240, 1.0, f"beat to retrain on the ml worker (log {worker.log_path})")
    assert row.active, row.notes  # the held-out samples of the new pattern make it better, not worse
    assert row.feedback_samples == 25
    after = probe()
    assert after["model_version"] == row.version
    assert after["predicted_severity"] == "P0" and after["category"] == "security"
    assert after["severity"] == "P0" and after["decided_by"] == "model"
    with read_session() as session:
        assert session.scalar(select(func.count()).select_from(TrainingSample)
                              .where(TrainingSample.consumed_by == row.version)) == 25
