"""Outbound settings: `circuit_breakers:` and `notifications:` (plus `integrations.jira`,
`integrations.webhooks` and `integrations.llm-governance-core.audit`) of config.yaml, validated once
per Settings object by marshmallow schemas (the settings' one validation vocabulary,
app/config/schema.py); the checks that span keys follow, raising ConfigError the same way. Every
error names its key (docs/notifications.md lists every setting)."""

from __future__ import annotations

import ipaddress
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

from marshmallow import EXCLUDE, INCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from app.config.schema import Bool, ConfigError, Int, load, section_schema
from app.domain.severity import SEVERITIES

# Integration clients and channels that always have a breaker (docs/notifications.md, "Circuit breakers").
# `playbooks`: http_request steps and remediation calls of integrations without a breaker of their own.
BUILTIN_TARGETS = ("sentinel", "shield", "edge-agent", "governance", "slack", "pagerduty", "jira", "email",
                   "playbooks")


# ------------------------------------------------------------------------------- validation vocabulary

class Text(fields.String):
    """A string; a number is taken as its text (`project_key: 42`); a boolean or a mapping is refused."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        return str(super()._deserialize(value, attr, data, **kwargs))


class Strings(fields.Field):
    """A string or a list of strings, as a tuple (`severity: P1` or `severity: [P0, P1]`)."""

    def __init__(self, choices: tuple[str, ...] | None = None, lower: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.choices, self.lower = choices, lower

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                                            for v in items):
            raise ValidationError("expected a string or a list of strings")
        found = tuple(str(v).lower() if self.lower else str(v) for v in items)
        for item in found:
            if self.choices is not None and item not in self.choices:
                raise ValidationError(f"expected {'P0..P4' if self.choices == SEVERITIES else ', '.join(self.choices)}"
                                      f", got {item!r}")
        return found


def Severities(**kwargs: Any) -> Strings:  # noqa: N802 (a field factory, read like a field)
    return Strings(choices=SEVERITIES, **kwargs)


def per_severity(values: fields.Field) -> fields.Dict:
    """A mapping keyed by severity (`P0: ...`)."""
    return fields.Dict(keys=fields.String(validate=validate.OneOf(SEVERITIES, error="expected P0..P4 as keys")),
                       values=values)


def Number(minimum: float = 0.0, maximum: float | None = None) -> fields.Float:  # noqa: N802
    return fields.Float(validate=validate.Range(min=minimum, max=maximum), allow_nan=False)


def Count(minimum: int = 0) -> Int:  # noqa: N802
    return Int(validate=validate.Range(min=minimum))


def Choice(*choices: str, **kwargs: Any) -> Text:  # noqa: N802
    return Text(validate=validate.OneOf(choices, error=f"expected one of {', '.join(choices)}, got {{input!r}}"),
                **kwargs)


class Section(Schema):
    """A config.yaml mapping: unknown keys are errors."""

    class Meta:
        unknown = RAISE


def nested(schema: type[Schema], **kwargs: Any) -> fields.Nested:
    return fields.Nested(schema, **kwargs)


def _secret(value: str | None, env: Mapping[str, str], env_name: str) -> str:
    """A credential from config.yaml (`${VAR}` already expanded) or the environment; an unexpanded
    `${VAR}` (the variable is not set) counts as absent."""
    text = value or ""
    if text.startswith("${") and text.endswith("}"):
        text = ""
    return text or (env.get(env_name, "") if env_name else "")


def _section(data: Any, schema: Schema, key: str) -> dict[str, Any]:
    """Validate one mapping (absent: empty) with `schema`; errors name `key.<setting>`."""
    if data is None:
        return {}
    return dict(load(schema, data, key))


# ------------------------------------------------------------------------------- circuit breakers

RECOVERY_TYPES = ("fixed", "linear", "exponential_backoff")


@dataclass(frozen=True)
class RecoveryStrategy:
    """How long an opened breaker waits before a trial call, by how many times it re-opened in a row."""

    type: str = "fixed"
    initial_timeout_secs: float | None = None  # None: the breaker's timeout_secs
    max_timeout_secs: float = 300.0
    multiplier: float = 2.0
    increment_secs: float = 30.0

    def timeout(self, base_secs: float, reopened: int) -> float:
        first = self.initial_timeout_secs if self.initial_timeout_secs is not None else base_secs
        if self.type == "exponential_backoff":
            return min(self.max_timeout_secs, first * self.multiplier ** reopened)
        if self.type == "linear":
            return min(self.max_timeout_secs, first + self.increment_secs * reopened)
        return first


@dataclass(frozen=True)
class BreakerConfig:
    """One target's breaker (the reference README's keys). `name` is the breaker's id in the API and
    metrics; `display_name` the README's `name:` field (accepted as another name in the API)."""

    name: str
    display_name: str = ""
    failure_threshold: int = 5  # consecutive failures that open it
    success_threshold: int = 2  # successful trials in half-open that close it
    timeout_secs: float = 60.0  # open -> half-open after this long
    volume_threshold: int = 10  # calls in the window before the error-rate rule may open it
    error_rate_threshold: float = 0.5
    window_secs: float = 60.0
    half_open_max_calls: int = 0  # 0: success_threshold
    recovery_strategy: RecoveryStrategy = field(default_factory=RecoveryStrategy)
    rate_limit_per_minute: int = 0  # 0: no limit
    rate_limit_burst: int = 10

    @property
    def trial_calls(self) -> int:
        return self.half_open_max_calls or self.success_threshold

    def open_timeout(self, reopened: int) -> float:
        return self.recovery_strategy.timeout(self.timeout_secs, reopened)


# Per-target rate limits that keep within the receivers' documented limits (Slack: about one message a
# second per webhook; PagerDuty Events v2: 120 events a minute per routing key). Others: unlimited.
_DEFAULT_RATE_LIMITS = {"slack": (60, 10), "pagerduty": (120, 20)}


class RecoverySchema(Section):
    type = Choice(*RECOVERY_TYPES)
    initial_timeout_secs = Number(0.001)
    max_timeout_secs = Number(0.001)
    multiplier = Number(1.0)
    increment_secs = Number()


class BreakerRateLimitSchema(Section):
    requests_per_minute = Count()
    burst = Count(1)


class BreakerSchema(Section):
    """One breaker's keys; what a body leaves out comes from `default` (then the built-in values)."""

    name = Text()
    failure_threshold = Count(1)
    success_threshold = Count(1)
    timeout_secs = Number(0.001)
    volume_threshold = Count(1)
    error_rate_threshold = Number(0.0, 1.0)
    window_secs = Number(0.001)
    half_open_max_calls = Count()
    recovery_strategy = nested(RecoverySchema)
    rate_limit = nested(BreakerRateLimitSchema)


def _breaker(name: str, body: Any, base: BreakerConfig) -> BreakerConfig:
    given = _section(body, BreakerSchema(), f"circuit_breakers.{name}")
    recovery = base.recovery_strategy
    if "recovery_strategy" in given:
        recovery = RecoveryStrategy(**{**recovery.__dict__, **given.pop("recovery_strategy")})
    rpm, burst = base.rate_limit_per_minute, base.rate_limit_burst
    if "rate_limit" in given:
        limit = given.pop("rate_limit")
        rpm, burst = limit.get("requests_per_minute", rpm), limit.get("burst", burst)
    display = given.pop("name", "") or (base.display_name if base.name == name else "")
    return BreakerConfig(**{**base.__dict__, **given, "name": name, "display_name": display,
                            "recovery_strategy": recovery, "rate_limit_per_minute": rpm, "rate_limit_burst": burst})


def _breakers(tree: Mapping[str, Any], targets: tuple[str, ...]) -> dict[str, BreakerConfig]:
    section = tree.get("circuit_breakers") or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"circuit_breakers: expected a mapping of breaker names, got {type(section).__name__}")
    default = _breaker("default", section.get("default"), BreakerConfig(name="default"))
    result: dict[str, BreakerConfig] = {}
    for name in dict.fromkeys(targets + tuple(str(n) for n in section if n != "default")):
        rpm, burst = _DEFAULT_RATE_LIMITS.get(name, (default.rate_limit_per_minute, default.rate_limit_burst))
        base = BreakerConfig(**{**default.__dict__, "name": name, "display_name": "",
                                "rate_limit_per_minute": rpm, "rate_limit_burst": burst})
        result[name] = _breaker(name, section.get(name), base)
    return result



# ------------------------------------------------------------------------------- outbound HTTP

@dataclass(frozen=True)
class HttpSettings:
    """`notifications.http`: the shared outbound client."""

    allow_private: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    timeout_secs: float = field(default=10.0, metadata={"validate": validate.Range(min=0.001)})
    connect_timeout_secs: float = field(default=5.0, metadata={"validate": validate.Range(min=0.001)})
    max_attempts: int = field(default=3, metadata={"validate": validate.Range(min=1)})
    backoff_initial_secs: float = 0.5
    backoff_max_secs: float = 30.0
    max_connections: int = field(default=100, metadata={"validate": validate.Range(min=1)})
    max_keepalive_connections: int = 20


_HTTP_SCHEMA = section_schema(HttpSettings)


def _http(section: Any, env: Mapping[str, str]) -> HttpSettings:
    key = "notifications.http"
    loaded: HttpSettings = load(_HTTP_SCHEMA, section or {}, key)
    listed = tuple(loaded.allow_private) + tuple(
        n.strip() for n in env.get("OUTBOUND_ALLOW_PRIVATE", "").split(",") if n.strip())
    networks = []
    for entry in listed:
        try:
            networks.append(ipaddress.ip_network(str(entry), strict=False))
        except ValueError:
            raise ConfigError(f"{key}.allow_private: {entry!r} is not an IP address or CIDR network "
                              "(the guard checks resolved addresses, so host names cannot be listed)") from None
    return HttpSettings(**{**loaded.__dict__, "allow_private": tuple(networks)})



# ------------------------------------------------------------------------------- channels

@dataclass(frozen=True)
class Route:
    """One routing rule: matches when every given list holds the incident's value."""

    target: str
    severity: tuple[str, ...] = ()
    category: tuple[str, ...] = ()
    service: tuple[str, ...] = ()

    def matches(self, incident: Mapping[str, Any]) -> bool:
        return ((not self.severity or incident.get("severity") in self.severity)
                and (not self.category or str(incident.get("category") or "").lower() in self.category)
                and (not self.service or incident.get("service") in self.service))


def route_schema(*target_keys: str) -> type[Schema]:
    """One rule of a routing list: `{severity, category, service, <target>}`, or `{default: X}`."""

    def check(self: Schema, data: dict[str, Any], **_: Any) -> None:
        if "default" in data:
            if isinstance(data["default"], (Mapping, list)) or data["default"] in (None, ""):
                raise ValidationError("expected a single value", "default")
        elif not any(data.get(k) for k in target_keys):
            raise ValidationError(f"needs one of {', '.join(target_keys)}")

    declared: dict[str, Any] = {"severity": Severities(), "category": Strings(lower=True), "service": Strings(),
                                "default": fields.Raw(), "_check": validates_schema(check)}
    declared.update({k: Text() for k in target_keys})
    return type(f"Route{''.join(k.title() for k in target_keys)}Schema", (Section,), declared)


def _routes(rules: list[dict[str, Any]], target_keys: tuple[str, ...]) -> tuple[tuple[Route, ...], str]:
    """Validated rules -> (rules, the default target)."""
    found: list[Route] = []
    default = ""
    for rule in rules:
        if "default" in rule:
            default = str(rule["default"])
            continue
        target = next(str(rule[k]) for k in target_keys if rule.get(k))
        found.append(Route(target=target, severity=rule.get("severity", ()), category=rule.get("category", ()),
                           service=rule.get("service", ())))
    return tuple(found), default


def route(rules: tuple[Route, ...], default: str, incident: Mapping[str, Any]) -> str:
    """The first matching rule's target, else the default."""
    return next((r.target for r in rules if r.matches(incident)), default)



@dataclass(frozen=True)
class SlackSettings:
    enabled: bool = False
    webhook_url: str = ""
    bot_token: str = ""
    signing_secret: str = ""
    api_url: str = "https://slack.com/api"
    routes: tuple[Route, ...] = ()
    default_channel: str = ""
    message_format: str = "blocks"
    mention_on_create: bool = False
    mention_groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    severity_emoji: Mapping[str, str] = field(default_factory=dict)


class SlackSchema(Section):
    enabled = Bool()
    webhook_url = Text()
    bot_token = Text()
    signing_secret = Text()
    api_url = Text()
    channel_routing = fields.List(nested(route_schema("channel")))
    message_format = Choice("blocks", "text")
    mention_on_create = Bool()
    mention_groups = per_severity(Strings())
    severity_emoji = per_severity(Text())


def _slack(section: Any, env: Mapping[str, str]) -> SlackSettings:
    key = "notifications.slack"
    given = _section(section, SlackSchema(), key)
    routes, default = _routes(given.get("channel_routing", []), ("channel",))
    settings = SlackSettings(
        enabled=given.get("enabled", bool(section)),
        webhook_url=_secret(given.get("webhook_url"), env, "SLACK_WEBHOOK_URL"),
        bot_token=_secret(given.get("bot_token"), env, "SLACK_BOT_TOKEN"),
        signing_secret=_secret(given.get("signing_secret"), env, "SLACK_SIGNING_SECRET"),
        api_url=given.get("api_url") or SlackSettings.api_url,
        routes=routes, default_channel=default, message_format=given.get("message_format", "blocks"),
        mention_on_create=given.get("mention_on_create", False),
        mention_groups=given.get("mention_groups", {}),
        severity_emoji=given.get("severity_emoji", {}),
    )
    if settings.enabled and not (settings.webhook_url or settings.bot_token):
        raise ConfigError(f"{key}: enabled, but neither webhook_url nor bot_token is set "
                          "(or SLACK_WEBHOOK_URL / SLACK_BOT_TOKEN)")
    if settings.enabled and settings.bot_token and not (settings.default_channel or settings.routes):
        raise ConfigError(f"{key}.channel_routing: with bot_token, give at least a `- default: \"#channel\"`")
    return settings



PAGERDUTY_SEVERITIES = ("critical", "error", "warning", "info")


@dataclass(frozen=True)
class PagerDutySettings:
    enabled: bool = False
    integration_key: str = ""
    api_key: str = ""
    events_url: str = "https://events.pagerduty.com/v2/enqueue"
    routes: tuple[Route, ...] = ()
    default_service: str = ""
    routing_keys: Mapping[str, str] = field(default_factory=dict)  # service_id -> routing (integration) key
    auto_resolve: bool = True
    severity_mapping: Mapping[str, str] = field(default_factory=lambda: {
        "P0": "critical", "P1": "critical", "P2": "error", "P3": "warning", "P4": "info"})
    escalate_on_timeout: bool = False
    escalation_timeout_minutes: int = 15

    def routing_key(self, incident: Mapping[str, Any]) -> str:
        """The rule's routing key (a rule names a `routing_key`, or a `service_id` looked up in
        `routing_keys`), else the default service's key, else `integration_key`."""
        chosen = route(self.routes, self.default_service, incident)
        return self.routing_keys.get(chosen, chosen) if chosen else self.integration_key


class PagerDutySchema(Section):
    enabled = Bool()
    api_key = Text()
    integration_key = Text()
    events_url = Text()
    service_routing = fields.List(nested(route_schema("routing_key", "service_id")))
    routing_keys = fields.Dict(keys=fields.String(), values=Text())
    auto_resolve = Bool()
    severity_mapping = per_severity(Choice(*PAGERDUTY_SEVERITIES))
    escalate_on_timeout = Bool()
    escalation_timeout_minutes = Count(1)


def _pagerduty(section: Any, env: Mapping[str, str]) -> PagerDutySettings:
    key = "notifications.pagerduty"
    given = _section(section, PagerDutySchema(), key)
    routes, default = _routes(given.get("service_routing", []), ("routing_key", "service_id"))
    base = PagerDutySettings()
    settings = PagerDutySettings(
        enabled=given.get("enabled", bool(section)),
        integration_key=_secret(given.get("integration_key"), env, "PAGERDUTY_INTEGRATION_KEY"),
        api_key=_secret(given.get("api_key"), env, "PAGERDUTY_API_KEY"),
        events_url=given.get("events_url") or base.events_url,
        routes=routes, default_service=default,
        routing_keys={k: _secret(v, env, "") for k, v in given.get("routing_keys", {}).items()},
        auto_resolve=given.get("auto_resolve", True),
        severity_mapping={**base.severity_mapping, **given.get("severity_mapping", {})},
        escalate_on_timeout=given.get("escalate_on_timeout", False),
        escalation_timeout_minutes=given.get("escalation_timeout_minutes", 15),
    )
    if settings.enabled and not settings.integration_key and not settings.routes and not settings.default_service:
        raise ConfigError(f"{key}: enabled, but no integration_key (or PAGERDUTY_INTEGRATION_KEY) "
                          "and no service_routing")
    return settings


@dataclass(frozen=True)
class EmailSettings:
    enabled: bool = False
    host: str = "localhost"
    port: int = 0  # 0: 465 with tls, 587 with starttls, 25 otherwise
    security: str = "starttls"  # starttls | tls | none
    username: str = ""
    password: str = ""
    from_address: str = "incidents@localhost"
    to: tuple[str, ...] = ()
    ca_file: str = ""
    timeout_secs: float = 10.0

    @property
    def effective_port(self) -> int:
        return self.port or {"tls": 465, "starttls": 587}.get(self.security, 25)


class EmailSchema(Section):
    enabled = Bool()
    host = Text()
    port = Count()
    security = Choice("starttls", "tls", "none")
    username = Text()
    password = Text()
    from_address = Text(data_key="from")
    to = Strings()
    ca_file = Text()
    timeout_secs = Number(0.001)


def _email(section: Any, env: Mapping[str, str]) -> EmailSettings:
    data = dict(section) if isinstance(section, Mapping) else section
    if isinstance(data, dict) and "port" not in data and env.get("SMTP_PORT"):
        data["port"] = env["SMTP_PORT"]  # validated as the key would be
    given = _section(data, EmailSchema(), "notifications.email")
    return EmailSettings(
        enabled=given.get("enabled", bool(section)),
        host=given.get("host") or env.get("SMTP_HOST", "localhost"),
        port=given.get("port", 0),
        security=given.get("security", "starttls"),
        username=_secret(given.get("username"), env, "SMTP_USERNAME"),
        password=_secret(given.get("password"), env, "SMTP_PASSWORD"),
        from_address=given.get("from_address") or EmailSettings.from_address,
        to=given.get("to", ()),
        ca_file=given.get("ca_file", ""),
        timeout_secs=given.get("timeout_secs", 10.0),
    )


@dataclass(frozen=True)
class JiraProject:
    project_key: str
    issue_type: str
    category: tuple[str, ...] = ()


@dataclass(frozen=True)
class JiraSettings:
    enabled: bool = False
    base_url: str = ""
    username: str = ""
    api_token: str = ""
    projects: tuple[JiraProject, ...] = ()
    default_project: JiraProject = JiraProject("INCIDENT", "Bug")
    severity_names: Mapping[str, str] = field(default_factory=lambda: {
        "P0": "Critical", "P1": "High", "P2": "Medium", "P3": "Low", "P4": "Trivial"})
    priority_names: Mapping[str, str] = field(default_factory=lambda: {
        "P0": "Highest", "P1": "High", "P2": "Medium", "P3": "Low", "P4": "Lowest"})
    incident_id_field: str = "customfield_10001"
    severity_field: str = ""  # a custom field id that takes severity_names (optional)
    labels: tuple[str, ...] = ("llm-incident-manager", "automated")
    sync_enabled: bool = False  # sync.enabled and sync.bidirectional: JIRA status back into incidents
    sync_interval_secs: int = 300
    status_mapping: Mapping[str, str] = field(default_factory=lambda: {"Done": "RESOLVED"})  # JIRA status -> ours

    def project(self, incident: Mapping[str, Any]) -> JiraProject:
        category = str(incident.get("category") or "").lower()
        return next((p for p in self.projects if category in p.category), self.default_project)


class JiraAuthSchema(Section):
    type = Choice("basic")  # user + API token
    username = Text()
    api_token = Text()


class JiraProjectSchema(Section):
    category = Strings(lower=True)
    project_key = Text(required=True)
    issue_type = Text(required=True)
    default = fields.Raw(allow_none=True)  # `- default:` followed by the keys (the guide's form)


class JiraFieldMappingSchema(Section):
    severity = per_severity(Text(validate=validate.Length(min=1)))
    priority = per_severity(Text(validate=validate.Length(min=1)))


class JiraSyncSchema(Section):
    enabled = Bool()
    bidirectional = Bool()
    sync_interval_seconds = Count(1)
    status_mapping = fields.Dict(keys=fields.String(), values=Choice("RESOLVED", "CLOSED"))


class JiraSchema(Section):
    enabled = Bool()
    base_url = Text()
    authentication = nested(JiraAuthSchema)
    project_mapping = fields.List(nested(JiraProjectSchema))
    field_mapping = nested(JiraFieldMappingSchema)
    sync = nested(JiraSyncSchema)
    incident_id_field = Text()
    severity_field = Text()
    labels = Strings()
    severity_mapping = fields.Raw()  # the reference README's keys with no setting here
    routing = fields.Raw()


def _jira(section: Any, env: Mapping[str, str]) -> JiraSettings:
    key = "integrations.jira"
    given = _section(section, JiraSchema(), key)
    auth, fields_map, sync = given.get("authentication", {}), given.get("field_mapping", {}), given.get("sync", {})
    base = JiraSettings()
    projects: list[JiraProject] = []
    default = base.default_project
    for body in given.get("project_mapping", []):
        project = JiraProject(body["project_key"], body["issue_type"], body.get("category", ()))
        if "default" in body:
            default = project
        else:
            projects.append(project)
    settings = JiraSettings(
        enabled=given.get("enabled", bool(section)),
        base_url=given.get("base_url", "").rstrip("/"),
        username=_secret(auth.get("username"), env, "JIRA_USERNAME"),
        api_token=_secret(auth.get("api_token"), env, "JIRA_API_TOKEN"),
        projects=tuple(projects), default_project=default,
        severity_names={**base.severity_names, **fields_map.get("severity", {})},
        priority_names={**base.priority_names, **fields_map.get("priority", {})},
        incident_id_field=given.get("incident_id_field") or base.incident_id_field,
        severity_field=given.get("severity_field", ""),
        labels=given.get("labels") or base.labels,
        sync_enabled=sync.get("enabled", False) and sync.get("bidirectional", False),
        sync_interval_secs=sync.get("sync_interval_seconds", base.sync_interval_secs),
        status_mapping=sync.get("status_mapping") or base.status_mapping,
    )
    if settings.enabled and not (settings.base_url and settings.username and settings.api_token):
        raise ConfigError(f"{key}: enabled, but base_url, authentication.username and authentication.api_token "
                          "are not all set")
    return settings


WEBHOOK_EVENTS = ("incident_created", "incident_acknowledged", "incident_resolved", "incident_closed",
                  "incident_updated", "sla_breached", "escalated")
DEFAULT_WEBHOOK_TEMPLATE = """{
  "event_type": "{{event_type}}",
  "incident": {
    "id": "{{incident.id}}",
    "title": "{{incident.title}}",
    "severity": "{{incident.severity}}",
    "status": "{{incident.status}}",
    "url": "{{incident_url}}"
  },
  "timestamp": "{{timestamp}}"
}
"""


@dataclass(frozen=True)
class WebhookTrigger:
    event: str
    severity: tuple[str, ...] = ()
    category: tuple[str, ...] = ()
    source: tuple[str, ...] = ()
    service: tuple[str, ...] = ()

    def matches(self, event: str, incident: Mapping[str, Any]) -> bool:
        return (event == self.event
                and (not self.severity or incident.get("severity") in self.severity)
                and (not self.category or str(incident.get("category") or "").lower() in self.category)
                and (not self.source or incident.get("source") in self.source)
                and (not self.service or incident.get("service") in self.service))


@dataclass(frozen=True)
class WebhookSettings:
    name: str
    url: str
    enabled: bool = True
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    auth_type: str = "none"  # none | bearer | basic
    token: str = field(default="", repr=False)
    username: str = ""
    password: str = field(default="", repr=False)
    triggers: tuple[WebhookTrigger, ...] = ()
    template: Any = None  # app.services.templates.PayloadTemplate
    max_attempts: int = 3
    timeout_secs: float = 10.0
    signing_secret: str = field(default="", repr=False)
    signature_header: str = "X-Incident-Manager-Signature"

    def wants(self, event: str, incident: Mapping[str, Any]) -> bool:
        return self.enabled and any(t.matches(event, incident) for t in self.triggers)


class WebhookConditionsSchema(Section):
    severity = Severities()
    category = Strings(lower=True)
    source = Strings()
    service = Strings()


class WebhookTriggerSchema(Section):
    event = Choice(*WEBHOOK_EVENTS, required=True)
    conditions = nested(WebhookConditionsSchema)


class WebhookAuthSchema(Section):
    type = Choice("none", "bearer", "basic")
    token = Text()
    username = Text()
    password = Text()


class WebhookRetrySchema(Section):
    max_attempts = Count(1)
    backoff = Text(validate=validate.Equal("exponential", error="only exponential (with jitter) is supported"))


class WebhookSchema(Section):
    name = Text(required=True, validate=validate.Length(min=1))
    enabled = Bool()
    url = Text(required=True, validate=validate.Regexp(r"^https?://", error="expected an http:// or https:// URL"))
    authentication = nested(WebhookAuthSchema)
    triggers = fields.List(nested(WebhookTriggerSchema), required=True,
                           validate=validate.Length(min=1, error="expected a non-empty list of {{event, conditions}}"))
    method = Text(validate=lambda m: m.upper() in ("POST", "PUT", "PATCH")
                  or _refuse(f"expected POST, PUT or PATCH, got {m!r}"))
    headers = fields.Dict(keys=fields.String(), values=Text())
    payload_template = Text()
    retry = nested(WebhookRetrySchema)
    timeout_ms = Count(1)
    signing_secret = Text()
    signature_header = Text()


def _refuse(message: str) -> bool:
    raise ValidationError(message)


def _webhooks(value: Any, env: Mapping[str, str]) -> tuple[WebhookSettings, ...]:
    from app.services.templates import TemplateError, compile_template

    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("integrations.webhooks: expected a list of webhooks")
    result: list[WebhookSettings] = []
    schema = WebhookSchema()
    for i, body in enumerate(value):
        key = f"integrations.webhooks[{i}]"
        given = _section(body if body is not None else {}, schema, key)
        name = given["name"]
        if name in BUILTIN_TARGETS or any(w.name == name for w in result):
            raise ConfigError(f"{key}.name: {name!r} is already the name of another target")
        auth = given.get("authentication", {})
        auth_type = auth.get("type", "bearer" if auth else "none")
        token = _secret(auth.get("token"), env, "")
        if auth_type == "bearer" and not token:
            raise ConfigError(f"{key}.authentication.token: required for bearer authentication")
        try:
            template = compile_template(given.get("payload_template") or DEFAULT_WEBHOOK_TEMPLATE,
                                        f"{key}.payload_template")
        except TemplateError as exc:
            raise ConfigError(str(exc)) from None
        retry = given.get("retry", {})
        result.append(WebhookSettings(
            name=name, url=given["url"], enabled=given.get("enabled", True),
            method=given.get("method", "POST").upper(),
            headers=given.get("headers") or {"Content-Type": "application/json"},
            auth_type=auth_type, token=token, username=auth.get("username", ""),
            password=_secret(auth.get("password"), env, ""),
            triggers=tuple(WebhookTrigger(event=t["event"], **t.get("conditions", {})) for t in given["triggers"]),
            template=template,
            max_attempts=retry.get("max_attempts", 3),
            timeout_secs=given.get("timeout_ms", 10_000) / 1000.0,
            signing_secret=_secret(given.get("signing_secret"), env, ""),
            signature_header=given.get("signature_header") or WebhookSettings.signature_header,
        ))
    return tuple(result)



AUDIT_EVENTS = ("incident_created", "incident_resolved", "incident_closed", "sla_breached", "escalated")


@dataclass(frozen=True)
class GovernanceAuditSettings:
    enabled: bool = False
    endpoint: str = ""
    api_key: str = field(default="", repr=False)
    push_events: tuple[str, ...] = AUDIT_EVENTS
    batching: bool = True
    max_batch_size: int = 100
    max_wait_ms: int = 60_000


class AuditAuthSchema(Section):
    type = Choice("api_key")  # X-API-Key
    api_key = Text()


class AuditBatchingSchema(Section):
    enabled = Bool()
    max_batch_size = Count(1)
    max_wait_ms = Count(1)


class AuditSchema(Section):
    endpoint = Text()
    authentication = nested(AuditAuthSchema)
    push_events = Strings(choices=AUDIT_EVENTS)
    batching = nested(AuditBatchingSchema)


class GovernanceSchema(Schema):
    """`integrations.llm-governance-core`: its other keys belong to the inbound integration."""

    class Meta:
        unknown = EXCLUDE

    enabled = Bool()
    audit = nested(AuditSchema)


def _governance(section: Any, env: Mapping[str, str]) -> GovernanceAuditSettings:
    key = "integrations.llm-governance-core"
    given = _section(section, GovernanceSchema(), key)
    audit = given.get("audit", {})
    auth, batching = audit.get("authentication", {}), audit.get("batching", {})
    settings = GovernanceAuditSettings(
        enabled=given.get("enabled", bool(audit)) and bool(audit),
        endpoint=audit.get("endpoint", ""),
        api_key=_secret(auth.get("api_key"), env, "GOVERNANCE_API_KEY"),
        push_events=audit.get("push_events") or AUDIT_EVENTS,
        batching=batching.get("enabled", True),
        max_batch_size=batching.get("max_batch_size", 100),
        max_wait_ms=batching.get("max_wait_ms", 60_000),
    )
    if settings.enabled and not (settings.endpoint and settings.api_key):
        raise ConfigError(f"{key}.audit: enabled, but endpoint or authentication.api_key (GOVERNANCE_API_KEY) "
                          "is not set")
    return settings



# ------------------------------------------------------------------------------- all outbound settings

@dataclass(frozen=True)
class OutboundSettings:
    breakers: Mapping[str, BreakerConfig]
    http: HttpSettings
    slack: SlackSettings = field(default_factory=SlackSettings)
    pagerduty: PagerDutySettings = field(default_factory=PagerDutySettings)
    email: EmailSettings = field(default_factory=EmailSettings)
    jira: JiraSettings = field(default_factory=JiraSettings)
    webhooks: tuple[WebhookSettings, ...] = ()
    governance: GovernanceAuditSettings = field(default_factory=GovernanceAuditSettings)
    incident_url_template: str = "{base_url}/incidents/{id}"
    base_url: str = "http://localhost:8080"

    def incident_url(self, incident_id: str) -> str:
        return self.incident_url_template.format(base_url=self.base_url, id=incident_id)

    def webhook(self, name: str) -> WebhookSettings | None:
        return next((w for w in self.webhooks if w.name == name), None)

    def breaker(self, name: str) -> BreakerConfig | None:
        found = self.breakers.get(name)
        if found is None:  # the README's `name:` field ("sentinel-api") names the same breaker
            found = next((b for b in self.breakers.values() if b.display_name and b.display_name == name), None)
        return found


class ChannelEntrySchema(Schema):
    """An entry of the reference README's `notifications.channels` list: its type; the rest is that
    channel's section, validated as such."""

    class Meta:
        unknown = INCLUDE

    type = Choice("slack", "pagerduty", "email")


class NotificationsSchema(Section):
    http = fields.Raw()
    slack = fields.Raw()
    pagerduty = fields.Raw()
    email = fields.Raw()
    channels = fields.List(nested(ChannelEntrySchema))
    incident_url_template = Text()


class IntegrationsOutboundSchema(Schema):
    """The outbound keys of `integrations:` (the inbound ones are app/config/integrations.py's)."""

    class Meta:
        unknown = EXCLUDE

    jira = fields.Raw()
    webhooks = fields.Raw()
    llm_governance_core = fields.Raw(data_key="llm-governance-core")


def _with_channel_list(notifications: dict[str, Any]) -> dict[str, Any]:
    """The reference README's form, `notifications.channels: [{type: slack, ...}]`: each entry is the
    section of its type (a section given by name wins; an entry then is an error, not ignored)."""
    merged = dict(notifications)
    for i, body in enumerate(merged.pop("channels", None) or []):
        body = dict(body)
        kind = body.pop("type", None)
        if kind is None:
            raise ConfigError(f"notifications.channels[{i}].type: required (slack, pagerduty or email)")
        if kind in notifications:
            raise ConfigError(f"notifications.channels[{i}]: {kind} is also configured as notifications.{kind}; "
                              "keep one")
        merged[kind] = body
    return merged


def load_outbound(tree: Mapping[str, Any], env: Mapping[str, str]) -> OutboundSettings:
    """Validate the outbound sections of a config tree. Raises ConfigError naming the key."""
    notifications = _with_channel_list(_section(tree.get("notifications"), NotificationsSchema(), "notifications"))
    integrations = _section(tree.get("integrations"), IntegrationsOutboundSchema(), "integrations")
    http = _http(notifications.get("http"), env)
    webhooks = _webhooks(integrations.get("webhooks"), env)
    targets = BUILTIN_TARGETS + tuple(w.name for w in webhooks)
    public = (env.get("PUBLIC_BASE_URL") or "").rstrip("/")
    return OutboundSettings(
        breakers=_breakers(tree, targets), http=http,
        slack=_slack(notifications.get("slack"), env),
        pagerduty=_pagerduty(notifications.get("pagerduty"), env),
        email=_email(notifications.get("email"), env),
        jira=_jira(integrations.get("jira"), env),
        webhooks=webhooks,
        governance=_governance(integrations.get("llm_governance_core"), env),
        incident_url_template=notifications.get("incident_url_template") or "{base_url}/incidents/{id}",
        base_url=public or f"http://localhost:{env.get('API_PORT', '8080')}",
    )


def get_outbound_settings() -> OutboundSettings:
    """The outbound settings of the process's current Settings (validated with them at start-up)."""
    from app.config import get_settings

    settings = get_settings()
    if settings.outbound is not None:
        return settings.outbound
    return _fallback(settings.raw)


_fallback_lock = threading.Lock()
_fallback_cache: dict[int, tuple[Mapping[str, Any], OutboundSettings]] = {}


def _fallback(tree: Mapping[str, Any]) -> OutboundSettings:
    """For Settings built without `outbound` (hand-made in a test): read once per config tree."""
    cached = _fallback_cache.get(id(tree))
    if cached is not None and cached[0] is tree:
        return cached[1]
    with _fallback_lock:
        outbound = load_outbound(tree, os.environ)
        _fallback_cache.clear()
        _fallback_cache[id(tree)] = (tree, outbound)
    return outbound
