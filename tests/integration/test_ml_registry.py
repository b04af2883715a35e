"""Model registry on real Postgres: versions, activation, rollback, corrupted files, the first
model at first start, and the "not worse" gate of a retraining."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from app.adapters.db import read_session, unit_of_work
from app.adapters.ml_models import ModelVersion, TrainingSample
from ml import registry
from ml.interface import ClassifierInput, get_classifier
from ml.training import SAMPLE_HELD_OUT_EVERY, load_shipped, train_new_version
from tests.unit.test_ml_model import base_model

EVENT = ClassifierInput(title="GPU out of memory on h100-sxm node serving llama-3-70b", source="edge-agent",
                        event_type="gpu_oom", source_severity="high", tags={"environment": "production"},
                        metrics={"oom_kills": 30.0, "gpu_memory_used_pct": 98.0})


@pytest.fixture
def ml_db(db: None) -> Iterator[None]:
    registry.reset_cache()
    yield
    registry.reset_cache()


def store(version: str) -> dict[str, Any]:
    """Register the session's base model under another version name (a copy, no training)."""
    model = copy.copy(base_model())
    model.version = version
    return registry.store_version(model, training_size=8000, feedback_samples=0,
                                  metrics={"severity_macro_f1": 0.86}, score=0.86, actor="test")


def serving() -> str:
    registry.invalidate()
    return get_classifier().version


def test_activate_list_and_rollback(ml_db: None) -> None:
    assert get_classifier().version == "rules-1"  # no model yet: the rules classifier serves
    for version in ("va", "vb", "vc"):
        store(version)
    assert [v["status"] for v in registry.list_versions()] == ["candidate"] * 3
    registry.activate("va")
    assert serving() == "va"
    registry.activate("vb")
    registry.activate("vc")
    assert serving() == "vc"
    states = {v["version"]: (v["status"], v["active"]) for v in registry.list_versions()}
    assert states == {"va": ("retired", False), "vb": ("retired", False), "vc": ("active", True)}

    assert registry.rollback()["version"] == "vb"
    assert serving() == "vb"
    assert registry.rollback()["version"] == "va"  # walks back, does not bounce to vc
    assert serving() == "va"
    with pytest.raises(registry.RegistryError, match="no earlier version"):
        registry.rollback()
    assert serving() == "va"
    with pytest.raises(registry.RegistryError, match="no model version 'nope'"):
        registry.activate("nope")
    with read_session() as session:
        assert session.scalar(select(func.count()).where(ModelVersion.active.is_(True))) == 1

    from cli import main

    runner = CliRunner()
    listed = runner.invoke(main, ["ml", "list"])
    assert listed.exit_code == 0, listed.output
    assert "* va" in listed.output and "rolled_back" in listed.output
    assert runner.invoke(main, ["ml", "activate", "vc"]).exit_code == 0
    assert serving() == "vc"
    rolled = runner.invoke(main, ["ml", "rollback"])
    assert rolled.exit_code == 0 and "active model: va" in rolled.output
    missing = runner.invoke(main, ["ml", "activate", "v-missing"])
    assert missing.exit_code == 1 and "no model version" in missing.output


def test_corrupted_model_file_is_refused_and_the_previous_version_keeps_serving(
        ml_db: None, caplog: pytest.LogCaptureFixture) -> None:
    store("good")
    bad = store("bad")
    registry.activate("good")
    assert serving() == "good"
    bad_path = registry.model_dir() / bad["file"]
    data = bad_path.read_bytes()
    bad_path.write_bytes(data[: len(data) // 2] + b"garbage" + data[len(data) // 2 + 7:])

    with pytest.raises(registry.ModelLoadError, match="corrupted: SHA-256"):
        registry.activate("bad")
    assert registry.active_version_row().version == "good"
    assert serving() == "good"

    from cli import main

    refused = CliRunner().invoke(main, ["ml", "activate", "bad"])
    assert refused.exit_code == 1 and "corrupted" in refused.output

    # The file of the version that is already active gets damaged on disk, then the version is
    # (re)activated by another process: this process logs the error and keeps serving what it has.
    store("later")
    registry.activate("later")
    assert serving() == "later"
    later_path = registry.model_dir() / "later.joblib"
    later_path.write_bytes(b"not a pickle at all")
    with unit_of_work() as session:  # as another process would after a checksum-valid write
        row = session.scalars(select(ModelVersion).where(ModelVersion.version == "later")).one()
        row.checksum = registry.sha256_of(later_path)
    registry.reset_cache()
    with caplog.at_level(logging.ERROR, logger="ml.registry"):
        # A fresh process cannot load the active file: it serves the most recent version that loads.
        assert serving() == "good"
    assert any("cannot be loaded" in r.getMessage() for r in caplog.records)
    assert get_classifier().predict_batch([EVENT])[0].model_version == "good"

    # An unpicklable file whose checksum matches gives a clear load error too.
    with pytest.raises(registry.ModelLoadError, match="cannot be loaded"):
        registry.activate("later")


def test_bootstrap_trains_the_first_model_and_the_gate_refuses_a_worse_one(ml_db: None) -> None:
    from cli import main

    runner = CliRunner()
    first = runner.invoke(main, ["ml", "bootstrap"])
    assert first.exit_code == 0, first.output
    assert "first model v1-" in first.output
    versions = registry.list_versions()
    assert len(versions) == 1 and versions[0]["active"] and versions[0]["status"] == "active"
    assert versions[0]["held_out_score"] >= 0.85
    metrics = versions[0]["metrics"]
    assert metrics["rules_baseline_severity_macro_f1"] < metrics["severity_macro_f1"] - 0.03
    assert metrics["guide_examples"]["size"] == 6 and len(metrics["guide_examples"]["events"]) == 6
    assert Path(registry.model_dir() / versions[0]["file"]).is_file()
    assert runner.invoke(main, ["ml", "bootstrap"]).output.startswith("a model version already exists")
    assert serving() == versions[0]["version"]

    # People "correct" 600 incidents to the opposite severity: a model trained on that is worse on
    # the held-out set, so it is stored as a candidate and the active version stays.
    train, _ = load_shipped()
    flipped = {"P0": "P4", "P1": "P3", "P2": "P0", "P3": "P1", "P4": "P0"}
    with unit_of_work() as session:
        for i, item in enumerate(train.inputs[:600]):
            session.add(TrainingSample(
                incident_id=None, origin="feedback", created_by="test",
                features={"title": item.title, "description": item.description, "source": item.source,
                          "event_type": item.event_type, "category": item.category,
                          "resource_type": item.resource_type, "source_severity": item.source_severity,
                          "tags": dict(item.tags), "metrics": dict(item.metrics)},
                severity=flipped[train.severities[i]], category=train.categories[i]))
    result = train_new_version(trigger="test", actor="test")
    assert not result.activated
    assert result.score < result.active_score
    assert result.new_samples == 600 and result.samples == 600
    rows = {v["version"]: v for v in registry.list_versions()}
    assert rows[result.version]["status"] == "candidate" and "kept" in rows[result.version]["notes"]
    assert registry.active_version_row().version == versions[0]["version"]
    assert serving() == versions[0]["version"]
    with read_session() as session:  # the samples are consumed: beat will not retrain on them again
        assert session.scalar(select(func.count()).select_from(TrainingSample)
                              .where(TrainingSample.consumed_by.is_(None))) == 0
        held = session.scalar(select(func.count()).select_from(TrainingSample)
                              .where(TrainingSample.id % SAMPLE_HELD_OUT_EVERY == 0))
    assert held == 120

    # The operator can override the gate.
    forced = runner.invoke(main, ["ml", "train", "--force"])
    assert forced.exit_code == 0, forced.output
    assert ": activated (forced)" in forced.output
    assert registry.active_version_row().version.startswith("v3-")
