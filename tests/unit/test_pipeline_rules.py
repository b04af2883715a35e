"""Pure rules of the pipeline: correlation scoring, routing decisions, their configuration."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from app.config import ConfigError, CorrelationSettings, IntegrationSettings, RoutingRule, load_settings
from app.services.pipeline.correlation import Item, score_matrix, strategy_scores, weighted_score
from app.services.pipeline.routing import decide_route, rule_matches

NOW = datetime(2026, 11, 23, tzinfo=timezone.utc)


def _item(i: str, source: str = "llm-sentinel", etype: str | None = "anomaly", service: str | None = "chat",
          tags: dict[str, str] | None = None, deps: frozenset[str] = frozenset()) -> Item:
    return Item(i, source, etype, service, frozenset(f"{k}={v}" for k, v in (tags or {}).items()), NOW, None, deps)


def test_strategy_scores():
    a = _item("a", tags={"env": "prod", "region": "eu"}, deps=frozenset({"db"}))
    b = _item("b", tags={"env": "prod"})
    assert strategy_scores(a, b, 0.8) == {"source": 1.0, "type": 1.0, "similarity": 0.8, "tags": 0.5, "service": 1.0}
    c = _item("c", source="llm-shield", etype=None, service="db")
    assert strategy_scores(a, c, -0.1) == {"source": 0.0, "type": 0.0, "similarity": 0.0, "tags": 0.0, "service": 0.5}


def test_weighted_score_normalises_over_enabled_strategies():
    config = CorrelationSettings()
    scores = {"source": 1.0, "type": 1.0, "similarity": 0.0, "tags": 0.0, "service": 0.0}
    score, reasons = weighted_score(scores, config)
    assert score == pytest.approx(0.35)
    assert [r["strategy"] for r in reasons] == ["source", "type"]
    only_source = dataclasses.replace(config, enable_type=False, enable_similarity=False, enable_tags=False,
                                      enable_service=False)
    assert weighted_score(scores, only_source)[0] == 1.0
    nothing = dataclasses.replace(only_source, enable_source=False)
    assert weighted_score(scores, nothing) == (0.0, [])


def test_score_matrix_matches_the_pairwise_score():
    config = CorrelationSettings()
    old = [_item("o1", tags={"env": "prod"}), _item("o2", source="llm-shield", service="db", deps=frozenset({"chat"}))]
    new = [_item("n1", tags={"env": "prod", "x": "1"}, deps=frozenset({"db"})),
           _item("n2", etype="drift", service=None)]
    texts = ["GPU pool exhausted", "prompt injection", "GPU pool exhausted again", "model drift"]
    matrix = score_matrix(new, old + new, texts, config)
    assert matrix.shape == (2, 4)
    for i, item in enumerate(new):
        for j, other in enumerate(old + new):
            expected, _ = weighted_score(strategy_scores(item, other, float(matrix.similarity[i, j])), config)
            assert matrix[i, j] == pytest.approx(expected, abs=1e-3), (item.id, other.id)
    assert matrix.similarity[0, 0] > 0.5 and matrix.similarity[0, 1] == 0.0
    assert np.all(matrix <= 1.0 + 1e-9)


SETTINGS = load_settings({"DATA_DIR": "/tmp/im-unit-settings", "API_KEY_SECRET": "k" * 32, "JWT_SECRET": "j" * 40})


def _snap(**overrides: object) -> dict[str, object]:
    snap: dict[str, object] = {"id": "INC-1", "title": "t", "description": "", "source": "llm-sentinel",
                               "event_type": "anomaly", "category": None, "severity": "P2", "source_severity": "medium",
                               "service": "chat", "resource_type": None, "resource_id": None, "tags": {"env": "prod"},
                               "metrics": {}, "team": None, "escalation_policy": None, "created_at": NOW.isoformat()}
    snap.update(overrides)
    return snap


def test_rule_matches():
    rule = RoutingRule(name="r", team="sre", severity=("P0", "P1"), category=("security",), tags={"env": "prod"})
    assert rule_matches(rule, "P0", "Security", "x", None, {"env": "prod"})
    assert not rule_matches(rule, "P2", "security", "x", None, {"env": "prod"})
    assert not rule_matches(rule, "P0", "security", "x", None, {"env": "dev"})
    assert not rule_matches(rule, "P0", None, "x", None, {"env": "prod"})
    assert rule_matches(RoutingRule(name="any", team="t"), "P4", None, "x", None, {})


def test_decide_route_precedence():
    settings = dataclasses.replace(
        SETTINGS,
        integrations={"llm-sentinel": IntegrationSettings(name="llm-sentinel", default_team="platform",
                                                          escalation_policy="default-policy")},
        routing_rules=(RoutingRule(name="p0", team="sre", severity=("P0",)),),
    )
    catalog = {"service": {"name": "chat", "owner_team": "serving", "escalation_policy": "serving-policy"}}
    assert decide_route(_snap(), {"severity": "P0"}, catalog, False, settings) == \
        {"team": "sre", "escalation_policy": None, "reason": "rule:p0"}
    assert decide_route(_snap(), {"severity": "P2"}, catalog, False, settings) == \
        {"team": "serving", "escalation_policy": "serving-policy", "reason": "service:chat"}
    assert decide_route(_snap(), {"severity": "P2"}, {}, False, settings) == \
        {"team": "platform", "escalation_policy": "default-policy", "reason": "default:llm-sentinel"}
    assert decide_route(_snap(team="mine"), {"severity": "P0"}, catalog, True, settings)["team"] == "mine"


def _load(tmp_path: Path, body: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "config.yaml"
    path.write_text(body)
    return load_settings({"CONFIG_FILE": str(path), "DATA_DIR": str(tmp_path), "API_KEY_SECRET": "k" * 32,
                          "JWT_SECRET": "j" * 40})


def test_routing_rules_and_correlation_weights_from_config(tmp_path):
    settings = _load(tmp_path, """
routing:
  rules:
    - name: security
      match: {category: [Security], severity: P0, tags: {env: prod}}
      team: security-team
      escalation_policy: sec
correlation:
  score_threshold: 0.7
  similarity_weight: 0.5
enrichment:
  history_size: 500
""")
    assert settings.routing_rules == (RoutingRule(name="security", team="security-team", escalation_policy="sec",
                                                  severity=("P0",), category=("security",), tags={"env": "prod"}),)
    assert settings.correlation.score_threshold == 0.7 and settings.correlation.similarity_weight == 0.5
    assert settings.enrichment.history_size == 500


@pytest.mark.parametrize("body, key", [
    ("routing: {rules: {a: 1}}", "routing.rules"),
    ("routing: {rules: [{match: {severity: P9}, team: t}]}", "routing.rules[0].match.severity"),
    ("routing: {rules: [{match: {colour: red}, team: t}]}", "routing.rules[0].match.colour"),
    ("routing: {rules: [{match: {source: x}}]}", "routing.rules[0]"),
    ("correlation: {score_threshold: high}", "correlation.score_threshold"),
    ("correlation: {weight_of_stars: 1}", "correlation.weight_of_stars"),
])
def test_bad_pipeline_config_names_the_key(tmp_path, body, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        _load(tmp_path, body)
