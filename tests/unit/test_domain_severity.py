"""Severity mapping: the guide's five, CONTRACT.md decision 5's extras, unknown -> P3, P-levels
pass through, and a per-integration mapping from config.yaml."""

from __future__ import annotations

import pytest

from app.config import load_settings
from app.domain.severity import SEVERITIES, is_severity, map_source_severity, severity_rank


@pytest.mark.parametrize("source,expected", [
    ("critical", "P0"), ("high", "P1"), ("medium", "P2"), ("low", "P3"), ("info", "P4"),  # guide §2
])
def test_the_guides_five(source, expected):
    assert map_source_severity(source) == expected


@pytest.mark.parametrize("source,expected", [
    ("error", "P1"), ("warning", "P2"),  # decision 5 (PagerDuty, Alertmanager)
    ("CRITICAL", "P0"), ("High", "P1"), ("  warning ", "P2"),
])
def test_contract_extras_and_case(source, expected):
    assert map_source_severity(source) == expected


@pytest.mark.parametrize("source", ["bogus", "sev1", "fatal", "debug", "", None, "P5", "p9"])
def test_anything_else_is_p3(source):
    assert map_source_severity(source) == "P3"


@pytest.mark.parametrize("level", ["P0", "P1", "P2", "P3", "P4", "p0", "p4"])
def test_p_levels_pass_through(level):
    assert map_source_severity(level) == level.upper()


def test_rank_and_membership():
    assert SEVERITIES == ("P0", "P1", "P2", "P3", "P4")
    assert [severity_rank(s) for s in SEVERITIES] == [0, 1, 2, 3, 4]
    assert is_severity("P2") and not is_severity("p2") and not is_severity("high")


def test_per_integration_mapping_from_config(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        "integrations:\n"
        "  llm-sentinel:\n"
        "    enabled: true\n"
        "    severity_mapping:\n"
        "      critical: P0\n"
        "      high: P0\n"        # Sentinel's 'high' pages
        "      medium: P2\n"
        "      disaster: P0\n"    # a source-specific word
        "    routing:\n"
        "      default_team: platform-team\n"
        "      escalation_policy: sentinel-escalation\n"
    )
    settings = load_settings({"CONFIG_FILE": str(config), "DATA_DIR": str(tmp_path / "data")})
    sentinel = settings.integration("llm-sentinel")
    assert map_source_severity("high", sentinel.severity_mapping) == "P0"
    assert map_source_severity("disaster", sentinel.severity_mapping) == "P0"
    assert map_source_severity("info", sentinel.severity_mapping) == "P4"  # defaults stay for the rest
    assert map_source_severity("unheard-of", sentinel.severity_mapping) == "P3"
    assert sentinel.default_team == "platform-team" and sentinel.escalation_policy == "sentinel-escalation"
    # other sources keep the default mapping
    other = settings.integration("llm-shield")
    assert map_source_severity("high", other.severity_mapping) == "P1"
    # the guide's short name `sentinel:` also applies to the source `llm-sentinel`
    config.write_text("integrations:\n  sentinel:\n    severity_mapping:\n      high: P0\n")
    settings = load_settings({"CONFIG_FILE": str(config), "DATA_DIR": str(tmp_path / "data")})
    assert map_source_severity("high", settings.integration("llm-sentinel").severity_mapping) == "P0"


@pytest.mark.parametrize(("mapped", "predicted", "confidence", "may_lower", "grounded", "expected"), [
    ("P2", "P0", 0.9, False, True, ("P0", "model")),       # confident: raised all the way
    ("P2", "P0", 0.69, False, True, ("P2", "source")),     # below the threshold: the source stands
    ("P2", "P0", 0.9, False, False, ("P2", "source")),     # unlike the training data: the source stands
    ("P1", "P3", 0.99, False, True, ("P1", "source")),     # never lowered unless the integration allows it
    ("P1", "P3", 0.99, True, True, ("P2", "model")),       # allowed: one level, whatever the model said
    ("P1", "P2", 0.99, True, True, ("P2", "model")),
    ("P4", "P4", 0.99, True, True, ("P4", "source")),      # agreement is the source's decision
    ("P3", None, None, True, True, ("P3", "source")),      # no prediction
])
def test_decide_severity_policy(mapped: str, predicted: str | None, confidence: float | None, may_lower: bool,
                                grounded: bool, expected: tuple[str, str]) -> None:
    from app.domain.severity import decide_severity

    severity, decided_by, why = decide_severity(mapped, False, predicted, confidence, 0.7, may_lower, grounded)
    assert (severity, decided_by) == expected and why


def test_decide_severity_says_rule_for_the_fallback_and_mapping_knows() -> None:
    from app.domain.severity import decide_severity, mapping_knows

    assert not mapping_knows(None) and not mapping_knows("sev-x") and mapping_knows(" High ") and mapping_knows("p2")
    assert decide_severity("P3", True, "P3", 0.9, 0.7, False)[:2] == ("P3", "rule")
    assert decide_severity("P3", True, "P1", 0.9, 0.7, False)[:2] == ("P1", "model")
