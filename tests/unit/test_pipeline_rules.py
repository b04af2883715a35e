"""Pure rules of the pipeline: correlation scoring, routing decisions, their configuration."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.config import ConfigError, CorrelationSettings, IntegrationSettings, RoutingRule, load_settings
from app.services.pipeline.grouping import Item, plan_groups, score_matrix, score_pair
from app.services.pipeline.routing import decide_route, rule_matches

NOW = datetime(2026, 11, 23, tzinfo=timezone.utc)


def _item(i: str, source: str = "llm-sentinel", etype: str | None = "anomaly", service: str | None = "chat",
          tags: dict[str, str] | None = None, deps: frozenset[str] = frozenset(), text: str = "",
          at: int = 0) -> Item:
    return Item(i, source, etype, service, frozenset(f"{k}={v}" for k, v in (tags or {}).items()),
                NOW + timedelta(seconds=at), None, deps, text)


def test_strategy_matches_and_reasons():
    config = CorrelationSettings()
    a = _item("a", tags={"env": "prod", "region": "eu"}, deps=frozenset({"db"}), text="GPU pool exhausted")
    b = _item("b", tags={"env": "prod"}, text="GPU pool exhausted")
    scores = score_matrix([a], [b], config)
    assert {name: round(float(part[0, 0]), 4) for name, part in scores.parts.items()} == {
        "source": 1.0, "type": 1.0, "similarity": 1.0, "tags": 0.5, "service": 1.0}
    assert scores.score(0, 0) == pytest.approx((0.15 + 0.2 + 0.3 + 0.15 * 0.5 + 0.2) / 1.0)
    c = _item("c", source="llm-shield", etype=None, service="db", text="prompt injection")
    score, reasons = score_pair(a, c, config)
    assert reasons == [{"strategy": "service", "match": 0.5, "weight": 0.2}]  # c is a's dependency
    assert score == pytest.approx(0.1)
    assert score_pair(c, a, config) == (score, reasons)  # symmetric: a pair has one score


def test_score_is_normalised_over_enabled_strategies():
    config = CorrelationSettings()
    a, b = _item("a", text="one"), _item("b", service="other", text="two")
    assert score_pair(a, b, config)[0] == pytest.approx(0.35)
    only_source = dataclasses.replace(config, enable_type=False, enable_similarity=False, enable_tags=False,
                                      enable_service=False)
    assert score_pair(a, b, only_source) == (1.0, [{"strategy": "source", "match": 1.0, "weight": 0.15}])
    nothing = dataclasses.replace(only_source, enable_source=False)
    assert score_pair(a, b, nothing) == (0.0, [])


def test_score_matrix_equals_the_score_of_each_pair():
    config = CorrelationSettings()
    old = [_item("o1", tags={"env": "prod"}, text="GPU pool exhausted"),
           _item("o2", source="llm-shield", service="db", deps=frozenset({"chat"}), text="prompt injection")]
    new = [_item("n1", tags={"env": "prod", "x": "1"}, deps=frozenset({"db"}), text="GPU pool exhausted again"),
           _item("n2", etype="drift", service=None, text="model drift")]
    matrix = score_matrix(new, old + new, config)
    assert matrix.shape == (2, 4)
    for i, item in enumerate(new):
        for j, other in enumerate(old + new):
            assert (matrix.score(i, j), matrix.reasons(i, j)) == score_pair(item, other, config), (item.id, other.id)
    assert matrix.parts["similarity"][0, 0] > 0.5 and matrix.parts["similarity"][0, 1] == 0.0
    assert np.all(matrix.total <= 1.0 + 1e-9)


def _ids() -> Any:
    counter = iter(range(1, 100))
    return lambda: f"CG-{next(counter)}"


def test_grouping_joins_the_best_candidates_group_or_opens_one_rooted_at_it():
    config = CorrelationSettings()
    old = [_item("old-grouped", text="GPU pool exhausted on node"), _item("old-free", text="disk full on db")]
    old[0].group_id = "CG-existing"
    new = [_item("n1", text="GPU pool exhausted on node", at=1), _item("n2", text="disk full on db", at=2),
           _item("n3", source="x", etype=None, service=None, text="unrelated words here", at=3)]
    plan = plan_groups(new, old, score_matrix(new, old + new, config), {"CG-existing": 4}, {}, config, _ids())
    assert plan.decisions["n1"]["group_id"] == "CG-existing" and plan.decisions["n1"]["related_to"] == "old-grouped"
    assert plan.decisions["n2"]["group_id"] == "CG-1" and plan.decisions["n2"]["related_to"] == "old-free"
    assert plan.new_groups == {"CG-1": {"root": "old-free", "score": plan.decisions["n2"]["score"],
                                        "reasons": plan.decisions["n2"]["reasons"]}}
    assert "n3" not in plan.decisions  # below the threshold with everything


def test_grouping_in_creation_order_within_the_batch():
    config = CorrelationSettings()
    new = [_item("late", text="GPU pool exhausted", at=5), _item("early", text="GPU pool exhausted", at=1)]
    plan = plan_groups(new, [], score_matrix(new, new, config), {}, {}, config, _ids())
    # the earlier incident is the root (score 1, reason root); the later one joins it
    assert plan.decisions["early"] == {"group_id": "CG-1", "score": 1.0, "reasons": [{"strategy": "root"}]}
    assert plan.decisions["late"]["related_to"] == "early" and plan.new_groups["CG-1"]["root"] == "early"


def test_grouping_respects_max_group_size_and_earlier_runs():
    config = dataclasses.replace(CorrelationSettings(), max_group_size=3)
    old = [_item("full-member", text="GPU pool exhausted")]
    old[0].group_id = "CG-full"
    new = [_item(f"n{i}", text="GPU pool exhausted", at=i) for i in range(5)]
    already = {"n0": {"group_id": "CG-before", "score": 0.9, "reasons": [{"strategy": "type"}]}}
    plan = plan_groups(new, old, score_matrix(new, old + new, config), {"CG-full": 3, "CG-before": 1}, already, config,
                       _ids())
    assert plan.decisions["n0"] == {**already["n0"], "existing": True}
    groups: dict[str, int] = {}
    for decision in plan.decisions.values():
        groups[decision["group_id"]] = groups.get(decision["group_id"], 0) + 1
    assert "CG-full" not in groups  # full: no candidate
    assert all(size <= 3 for size in groups.values())
    one = dataclasses.replace(config, max_group_size=1)
    assert plan_groups(new, [], score_matrix(new, new, one), {}, {}, one, _ids()).decisions == {}


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


def test_similarity_matrix_equals_the_sparse_dot_product():
    from app.services.pipeline import text

    words = ["latency", "spike", "gpu", "memory", "token", "budget", "drift", "injection"]
    texts = [text.incident_text(f"{words[i % 8]} {words[(i * 3) % 8]} alert-{i}", "p95 latency exceeded threshold")
             for i in range(400)]
    vectors = text.vectors(texts)
    left, right = vectors[:150], vectors[100:]  # overlapping rows: each shares its own words too
    expected = np.asarray((left @ right.T).todense())
    got = text.similarity_matrix(left, right)
    assert got.shape == (150, 300) and np.abs(got - expected).max() < 1e-5
    assert got[100, 0] == pytest.approx(1.0, abs=1e-5)  # the same row on both sides
    assert text.similarity_matrix(left[:0], right).shape == (0, 300)


def test_top_columns_is_a_stable_argsort_cut_at_the_limit_and_threshold():
    import numpy as np

    from app.services.pipeline.enrichment import top_columns

    rng = np.random.default_rng(1)
    for _ in range(300):
        rows, columns = int(rng.integers(0, 6)), int(rng.integers(0, 12))
        scores = (rng.integers(0, 5, size=(rows, columns)) / 4).astype(np.float32)  # many ties
        limit, threshold = int(rng.integers(0, 7)), float(rng.choice([0.0, 0.5, 0.8]))
        ranked = np.argsort(-scores, axis=1, kind="stable")[:, :limit]
        expected = [[j for j in ranked[i] if scores[i, j] >= threshold] for i in range(rows)]
        assert [list(found) for found in top_columns(scores, limit, threshold)] == expected
