"""Playbook rules without a database: when triggers match an incident (the guide's Shield event
names its violation in the title, not in its `violation` type), and the guide's §3
`auto_remediation` block loading as written, with the endpoint from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ConfigError, load_settings
from app.config.remediation import remediation_for
from app.domain.playbook import IncidentFacts, triggers_match

SHIELD = IncidentFacts(severity="P0", category="security", event_type="violation", source="llm-shield",
                       title="Prompt Injection Detected",
                       tags={"environment": "production", "user_id": "user-789"})


@pytest.mark.parametrize("triggers, expected", [
    ({"severity": ["P0"], "event_type": ["prompt_injection", "data_leakage"]}, True),
    ({"severity": ["P1"], "event_type": ["prompt_injection"]}, False),
    ({"event_type": ["policy_violation"]}, False),
    ({"event_type": ["violation"]}, True),
    ({"event_type": ["injection_prompt"]}, False),  # the words in the title's order only
    ({"source": ["shield"]}, True),
    ({"source": ["llm-shield"], "category": ["Security"]}, True),
    ({"source": ["llm-sentinel"]}, False),
    ({"tags": {"environment": "production"}}, True),
    ({"tags": {"environment": "staging"}}, False),
    ({}, False),  # no trigger: manual runs only
    ({"severity": []}, False),
])
def test_triggers(triggers, expected):
    assert triggers_match(triggers, SHIELD) is expected


GUIDE = """
integrations:
  llm-shield:
    enabled: true
    auto_remediation:
      enabled: true
      actions:
        - type: block_user
          conditions:
            severity: [P0]
            event_type: [prompt_injection, data_leakage]
        - type: rate_limit
          conditions:
            severity: [P1]
            event_type: [policy_violation]
"""


def _settings(tmp_path: Path, text: str, **env: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_settings({"CONFIG_FILE": str(path), "DATA_DIR": str(tmp_path), **env})


def test_the_guides_auto_remediation_loads_with_the_endpoint_from_the_environment(tmp_path):
    settings = _settings(tmp_path, GUIDE, SHIELD_REMEDIATION_URL="https://shield.example.com/remediate/",
                         SHIELD_REMEDIATION_API_KEY="secret")
    shield = remediation_for(settings.remediation, "llm-shield")
    assert remediation_for(settings.remediation, "shield") is shield
    assert (shield.endpoint, shield.api_key, shield.breaker) == ("https://shield.example.com/remediate", "secret",
                                                                 "shield")
    assert [(a.type, dict(a.conditions)) for a in shield.actions] == [
        ("block_user", {"severity": ["P0"], "event_type": ["prompt_injection", "data_leakage"]}),
        ("rate_limit", {"severity": ["P1"], "event_type": ["policy_violation"]})]
    assert "secret" not in repr(shield)
    edge = remediation_for(_settings(tmp_path, "{}", EDGE_AGENT_REMEDIATION_URL="http://edge:9000").remediation,
                           "llm-edge-agent")
    assert (edge.endpoint, edge.breaker, edge.actions) == ("http://edge:9000", "edge-agent", ())


@pytest.mark.parametrize("text, env, key", [
    (GUIDE.replace("type: block_user", "type: reboot"), {}, "integrations.llm-shield.auto_remediation.actions[0].type"),
    (GUIDE.replace("severity: [P0]", "severity: [P7]"), {},
     "integrations.llm-shield.auto_remediation.actions[0].conditions.severity"),
    (GUIDE.replace("enabled: true\n      actions", "endpoint: ftp://x\n      actions"), {},
     "integrations.llm-shield.auto_remediation.endpoint"),
    (GUIDE, {"SHIELD_REMEDIATION_URL": "shield:9000"}, "SHIELD_REMEDIATION_URL"),
])
def test_bad_remediation_settings_name_the_key(tmp_path, text, env, key):
    with pytest.raises(ConfigError) as error:
        _settings(tmp_path, text, **env)
    assert str(error.value).startswith(key), str(error.value)
