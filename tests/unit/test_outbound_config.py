"""The outbound sections of config.yaml, validated by marshmallow schemas like every other section:
what a valid tree gives, and what each bad input gets (a ConfigError naming the key)."""

from __future__ import annotations

from typing import Any

import pytest

from app.config.outbound import load_outbound
from app.config.schema import ConfigError

ENV: dict[str, str] = {}


def test_a_full_tree_loads_with_defaults_filled_in():
    outbound = load_outbound({
        "circuit_breakers": {"default": {"failure_threshold": 3, "recovery_strategy": {"type": "linear"}},
                             "sentinel": {"name": "sentinel-api", "timeout_secs": 30,
                                          "recovery_strategy": {"max_timeout_secs": 120}}},
        "notifications": {
            "http": {"allow_private": ["10.20.0.0/16"], "timeout_secs": 3},
            "channels": [{"type": "email", "host": "smtp.example.com", "from": "im@example.com", "to": "a@b.c"}],
            "slack": {"bot_token": "xoxb-1", "channel_routing": [{"severity": "P0", "channel": "#crit"},
                                                                 {"default": "#general"}]},
            "pagerduty": {"integration_key": "k" * 32, "severity_mapping": {"P2": "warning"}}},
        "integrations": {
            "sentinel": {"enabled": True},  # inbound keys are not this module's
            "jira": {"base_url": "https://jira.example.com/", "authentication": {"username": "u", "api_token": "t"},
                     "project_mapping": [{"category": ["Security"], "project_key": "SEC", "issue_type": "Sec"},
                                         {"default": None, "project_key": "OPS", "issue_type": "Incident"}],
                     "sync": {"enabled": True, "bidirectional": True, "sync_interval_seconds": 60}},
            "webhooks": [{"name": "hook", "url": "https://h.example.com/x", "method": "put",
                          "triggers": [{"event": "incident_created", "conditions": {"severity": "P1"}}]}],
            "llm-governance-core": {"endpoint": "ignored-here",
                                    "audit": {"endpoint": "https://g.example.com/a",
                                              "authentication": {"api_key": "g"}}}}}, ENV)
    sentinel = outbound.breakers["sentinel"]
    assert (sentinel.display_name, sentinel.failure_threshold, sentinel.timeout_secs) == ("sentinel-api", 3, 30)
    assert (sentinel.recovery_strategy.type, sentinel.recovery_strategy.max_timeout_secs) == ("linear", 120)
    assert outbound.breakers["slack"].rate_limit_per_minute == 60 and outbound.breakers["hook"].failure_threshold == 3
    assert [str(n) for n in outbound.http.allow_private] == ["10.20.0.0/16"] and outbound.http.timeout_secs == 3
    assert outbound.email.enabled and outbound.email.to == ("a@b.c",) and outbound.email.effective_port == 587
    assert outbound.slack.default_channel == "#general" and outbound.slack.routes[0].severity == ("P0",)
    mapping = outbound.pagerduty.severity_mapping
    assert mapping["P2"] == "warning" and mapping["P0"] == "critical"
    jira = outbound.jira
    assert jira.base_url == "https://jira.example.com" and jira.default_project.project_key == "OPS"
    assert jira.project({"category": "security"}).project_key == "SEC" and jira.sync_enabled
    assert jira.sync_interval_secs == 60 and jira.status_mapping == {"Done": "RESOLVED"}
    [hook] = outbound.webhooks
    assert hook.method == "PUT" and hook.triggers[0].severity == ("P1",) and hook.timeout_secs == 10.0
    assert outbound.governance.enabled and outbound.governance.max_batch_size == 100


@pytest.mark.parametrize("tree, message", [
    ({"circuit_breakers": {"sentinel": {"failure_threshold": 0}}},
     "circuit_breakers.sentinel.failure_threshold: Must be greater than or equal to 1"),
    ({"circuit_breakers": {"sentinel": {"recovery_strategy": {"type": "random"}}}},
     "circuit_breakers.sentinel.recovery_strategy.type: expected one of fixed, linear, exponential_backoff"),
    ({"circuit_breakers": {"sentinel": {"retries": 3}}}, "circuit_breakers.sentinel.retries: unknown setting"),
    ({"circuit_breakers": ["sentinel"]}, "circuit_breakers: expected a mapping"),
    ({"notifications": {"http": {"timeout_secs": 0}}}, "notifications.http.timeout_secs: Must be greater"),
    ({"notifications": {"http": {"allow_private": ["intranet.local"]}}},
     "notifications.http.allow_private: 'intranet.local' is not an IP address"),
    ({"notifications": {"slack": {"bot_token": "x", "color": "red"}}}, "notifications.slack.color: unknown setting"),
    ({"notifications": {"slack": {"bot_token": "x", "channel_routing": [{"severity": "P9", "channel": "#a"}]}}},
     "notifications.slack.channel_routing[0].severity: expected P0..P4, got 'P9'"),
    ({"notifications": {"slack": {"bot_token": "x", "channel_routing": [{"severity": "P1"}]}}},
     "notifications.slack.channel_routing[0]: needs one of channel"),
    ({"notifications": {"slack": {"enabled": True}}}, "notifications.slack: enabled, but neither webhook_url"),
    ({"notifications": {"pagerduty": {"integration_key": "k", "severity_mapping": {"P1": "loud"}}}},
     "notifications.pagerduty.severity_mapping.P1.value: expected one of critical, error, warning, info"),
    ({"notifications": {"email": {"port": "smtp"}}}, "notifications.email.port: Not a valid integer"),
    ({"notifications": {"email": {"security": "ssl"}}}, "notifications.email.security: expected one of starttls"),
    ({"notifications": {"channels": [{"type": "fax"}]}}, "notifications.channels[0].type: expected one of slack"),
    ({"integrations": {"jira": {"base_url": "x", "sync": {"status_mapping": {"Done": "DELETED"}}}}},
     "integrations.jira.sync.status_mapping.Done.value: expected one of RESOLVED, CLOSED"),
    ({"integrations": {"jira": {"authentication": {"type": "oauth"}}}},
     "integrations.jira.authentication.type: expected one of basic"),
    ({"integrations": {"jira": {"enabled": True, "base_url": "https://j"}}}, "integrations.jira: enabled, but"),
    ({"integrations": {"webhooks": {"name": "x"}}}, "integrations.webhooks: expected a list"),
    ({"integrations": {"webhooks": [{"name": "h", "url": "ftp://x", "triggers": [{"event": "escalated"}]}]}},
     "integrations.webhooks[0].url: expected an http:// or https:// URL"),
    ({"integrations": {"webhooks": [{"name": "h", "url": "https://x", "triggers": [{"event": "exploded"}]}]}},
     "integrations.webhooks[0].triggers[0].event: expected one of incident_created"),
    ({"integrations": {"webhooks": [{"name": "h", "url": "https://x", "triggers": []}]}},
     "integrations.webhooks[0].triggers: expected a non-empty list"),
    ({"integrations": {"webhooks": [{"name": "slack", "url": "https://x", "triggers": [{"event": "escalated"}]}]}},
     "integrations.webhooks[0].name: 'slack' is already the name of another target"),
    ({"integrations": {"webhooks": [{"name": "h", "url": "https://x", "method": "GET",
                                     "triggers": [{"event": "escalated"}]}]}},
     "integrations.webhooks[0].method: expected POST, PUT or PATCH, got 'GET'"),
    ({"integrations": {"webhooks": [{"name": "h", "url": "https://x", "authentication": {"type": "bearer"},
                                     "triggers": [{"event": "escalated"}]}]}},
     "integrations.webhooks[0].authentication.token: required for bearer authentication"),
    ({"integrations": {"webhooks": [{"name": "h", "url": "https://x", "triggers": [{"event": "escalated"}],
                                     "payload_template": "{{ incident.__class__ }}"}]}},
     "template integrations.webhooks[0].payload_template: line 1: access to '__class__' is not allowed"),
    ({"integrations": {"llm-governance-core": {"audit": {"push_events": ["incident_updated"]}}}},
     "integrations.llm-governance-core.audit.push_events: expected incident_created"),
])
def test_each_bad_input_names_its_key(tree: dict[str, Any], message: str):
    with pytest.raises(ConfigError) as caught:
        load_outbound(tree, ENV)
    assert str(caught.value).startswith(message), str(caught.value)
