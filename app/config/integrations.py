"""config.yaml `integrations.<source>` (severity mapping, default routing) and `routing.rules[]`."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, post_load, pre_load, validate, validates_schema

from app.config.schema import Bool, StrList, always, load
from app.domain.severity import DEFAULT_MAPPING, SEVERITIES

DEFAULT_SEVERITY_MAPPING: dict[str, str] = dict(DEFAULT_MAPPING)


@dataclass(frozen=True)
class IntegrationSettings:
    """Per-integration settings (`integrations.<name>` in config.yaml, keyed by event source)."""

    name: str
    severity_mapping: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_SEVERITY_MAPPING))
    default_team: str | None = None
    escalation_policy: str | None = None
    auto_page: bool = False


@dataclass(frozen=True)
class RoutingRule:
    """`routing.rules[]` in config.yaml: the first rule whose `match` holds gives team/policy."""

    name: str
    team: str | None = None
    escalation_policy: str | None = None
    severity: tuple[str, ...] = ()
    category: tuple[str, ...] = ()
    source: tuple[str, ...] = ()
    service: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)


@lru_cache(maxsize=1024)  # ingest asks once per incident row; sources are few
def default_integration(source: str) -> IntegrationSettings:
    return IntegrationSettings(name=source)


class SeverityMapping(fields.Dict):
    """Source severity -> P0..P4, laid over the default mapping; an error names the source severity."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise ValidationError("expected a mapping of source severity to P0..P4")
        wrong = {str(k): [f"expected one of {', '.join(SEVERITIES)}, got {v!r}"]
                 for k, v in value.items() if str(v) not in SEVERITIES}
        if wrong:
            raise ValidationError(wrong)
        return {**DEFAULT_SEVERITY_MAPPING, **{str(k).lower(): str(v) for k, v in value.items()}}


class _RoutingSchema(Schema):
    class Meta:
        unknown = RAISE

    default_team = fields.String(load_default=None)
    escalation_policy = fields.String(load_default=None)
    auto_page = Bool(load_default=False)


class _IntegrationSchema(Schema):
    # The guide's `authentication` and `rate_limit` blocks load and have no effect: API keys are
    # created with `incident-manager apikey create` (docs/foundation.md, "Configuration").
    class Meta:
        unknown = EXCLUDE

    # Events of a source are refused by revoking its API keys, not by configuration.
    enabled = Bool(load_default=True, validate=always(True, "revoke the integration's API keys to stop it"))
    severity_mapping = SeverityMapping(load_default=dict)
    routing = fields.Nested(_RoutingSchema, load_default=dict)


class _MatchSchema(Schema):
    class Meta:
        unknown = RAISE

    severity = StrList(validate=validate.ContainsOnly(SEVERITIES), load_default=())
    category = StrList(load_default=())
    source = StrList(load_default=())
    service = StrList(load_default=())
    tags = fields.Dict(keys=fields.String(), values=fields.Raw(), load_default=dict)

    @pre_load
    def _singletons(self, data: Any, **_: Any) -> Any:
        # A single string is shorthand for a one-element list.
        if isinstance(data, Mapping):
            return {k: [v] if isinstance(v, str) and k != "tags" else v for k, v in data.items()}
        return data


class _RuleSchema(Schema):
    class Meta:
        unknown = RAISE

    name = fields.String(load_default=None)
    team = fields.String(load_default=None)
    escalation_policy = fields.String(load_default=None)
    match = fields.Nested(_MatchSchema, load_default=dict)

    @validates_schema
    def _needs_a_target(self, data: Mapping[str, Any], **_: Any) -> None:
        if not data.get("team") and not data.get("escalation_policy"):
            raise ValidationError("needs a team or an escalation_policy")


class _RoutingRulesSchema(Schema):
    class Meta:
        unknown = RAISE

    rules = fields.List(fields.Nested(_RuleSchema), load_default=list)

    @post_load
    def _rules(self, data: Mapping[str, Any], **_: Any) -> tuple[RoutingRule, ...]:
        return tuple(RoutingRule(
            name=rule["name"] or f"rule-{i + 1}",
            team=rule["team"] or None,
            escalation_policy=rule["escalation_policy"] or None,
            severity=tuple(str(s) for s in rule["match"].get("severity", ())),
            category=tuple(str(c).lower() for c in rule["match"].get("category", ())),
            source=tuple(str(s) for s in rule["match"].get("source", ())),
            service=tuple(str(s) for s in rule["match"].get("service", ())),
            tags={str(k): str(v) for k, v in rule["match"].get("tags", {}).items()},
        ) for i, rule in enumerate(data["rules"]))


def load_integrations(tree: Mapping[str, Any]) -> dict[str, IntegrationSettings]:
    """`integrations.<name>` mappings; a list there (e.g. `webhooks:`) belongs to notifications."""
    section = tree.get("integrations") or {}
    load(Schema.from_dict({})(unknown=EXCLUDE), section, "integrations")  # a mapping, or a named error
    result: dict[str, IntegrationSettings] = {}
    for name, body in section.items():
        if not isinstance(body, Mapping):
            continue
        data = load(_IntegrationSchema(), body, f"integrations.{name}")
        result[name] = IntegrationSettings(name=name, severity_mapping=
                                           data["severity_mapping"] or dict(DEFAULT_SEVERITY_MAPPING),
                                           **data["routing"])
    return result


def load_routing_rules(tree: Mapping[str, Any]) -> tuple[RoutingRule, ...]:
    """`routing: {rules: [{name, match: {severity, category, source, service, tags}, team, escalation_policy}]}`."""
    rules: tuple[RoutingRule, ...] = load(_RoutingRulesSchema(), tree.get("routing") or {}, "routing")
    return rules
