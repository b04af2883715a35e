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
