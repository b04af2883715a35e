"""Outbound settings: `circuit_breakers:` and `notifications:` (plus `integrations.jira`,
`integrations.webhooks` and `integrations.llm-governance-core.audit`) of config.yaml, validated once
per Settings object. Every error names its key (docs/notifications.md lists every setting)."""

from __future__ import annotations

import ipaddress
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

from app.config.schema import ConfigError
from app.domain.severity import SEVERITIES

# Integration clients and channels that always have a breaker (docs/notifications.md, "Circuit breakers").
# `playbooks`: http_request steps and remediation calls of integrations without a breaker of their own.
BUILTIN_TARGETS = ("sentinel", "shield", "edge-agent", "governance", "slack", "pagerduty", "jira", "email",
                   "playbooks")


# ------------------------------------------------------------------------------- parsing helpers

def _mapping(key: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


def _known(key: str, body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown setting (known: {', '.join(sorted(allowed))})")


def _number(key: str, value: Any, minimum: float = 0.0, maximum: float | None = None) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if number < minimum or (maximum is not None and number > maximum):
        bound = f">= {minimum:g}" if maximum is None else f"within {minimum:g}..{maximum:g}"
        raise ConfigError(f"{key}: must be {bound}, got {value!r}")
    return number


def _integer(key: str, value: Any, minimum: int = 0) -> int:
    number = _number(key, value, minimum)
    if not number.is_integer():
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    return int(number)


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{key}: expected a boolean (true/false), got {value!r}")


def _text(key: str, value: Any, required: bool = False) -> str:
    if value is None or value == "":
        if required:
            raise ConfigError(f"{key}: required")
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected a string, got {type(value).__name__}")
    return str(value)


def _strings(key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int)) for v in value):
        raise ConfigError(f"{key}: expected a string or a list of strings")
    return tuple(str(v) for v in value)


def _severities(key: str, value: Any) -> tuple[str, ...]:
    found = _strings(key, value)
    for severity in found:
        if severity not in SEVERITIES:
            raise ConfigError(f"{key}: expected P0..P4, got {severity!r}")
    return found


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


_BREAKER_KEYS = {"name", "failure_threshold", "success_threshold", "timeout_secs", "volume_threshold",
                 "error_rate_threshold", "window_secs", "half_open_max_calls", "recovery_strategy", "rate_limit"}
# Per-target rate limits that keep within the receivers' documented limits (Slack: about one message a
# second per webhook; PagerDuty Events v2: 120 events a minute per routing key). Others: unlimited.
_DEFAULT_RATE_LIMITS = {"slack": (60, 10), "pagerduty": (120, 20)}


def _breaker(name: str, body: Mapping[str, Any], base: BreakerConfig) -> BreakerConfig:
    key = f"circuit_breakers.{name}"
    _known(key, body, _BREAKER_KEYS)
    recovery = base.recovery_strategy
    if "recovery_strategy" in body:
        raw = _mapping(f"{key}.recovery_strategy", body["recovery_strategy"])
        _known(f"{key}.recovery_strategy", raw,
               {"type", "initial_timeout_secs", "max_timeout_secs", "multiplier", "increment_secs"})
        kind = _text(f"{key}.recovery_strategy.type", raw.get("type", recovery.type))
        if kind not in RECOVERY_TYPES:
            raise ConfigError(f"{key}.recovery_strategy.type: expected one of {', '.join(RECOVERY_TYPES)}, "
                              f"got {kind!r}")
        initial = raw.get("initial_timeout_secs", recovery.initial_timeout_secs)
        recovery = RecoveryStrategy(
            type=kind,
            initial_timeout_secs=None if initial is None else _number(f"{key}.recovery_strategy.initial_timeout_secs",
                                                                      initial, 0.001),
            max_timeout_secs=_number(f"{key}.recovery_strategy.max_timeout_secs",
                                     raw.get("max_timeout_secs", recovery.max_timeout_secs), 0.001),
            multiplier=_number(f"{key}.recovery_strategy.multiplier", raw.get("multiplier", recovery.multiplier), 1.0),
            increment_secs=_number(f"{key}.recovery_strategy.increment_secs",
                                   raw.get("increment_secs", recovery.increment_secs)),
        )
    rpm, burst = base.rate_limit_per_minute, base.rate_limit_burst
    if "rate_limit" in body:
        raw = _mapping(f"{key}.rate_limit", body["rate_limit"])
        _known(f"{key}.rate_limit", raw, {"requests_per_minute", "burst"})
        rpm = _integer(f"{key}.rate_limit.requests_per_minute", raw.get("requests_per_minute", rpm))
        burst = _integer(f"{key}.rate_limit.burst", raw.get("burst", burst), 1)
    return BreakerConfig(
        name=name,
        display_name=_text(f"{key}.name", body.get("name", "")) or (base.display_name if base.name == name else ""),
        failure_threshold=_integer(f"{key}.failure_threshold",
                                   body.get("failure_threshold", base.failure_threshold), 1),
        success_threshold=_integer(f"{key}.success_threshold",
                                   body.get("success_threshold", base.success_threshold), 1),
        timeout_secs=_number(f"{key}.timeout_secs", body.get("timeout_secs", base.timeout_secs), 0.001),
        volume_threshold=_integer(f"{key}.volume_threshold", body.get("volume_threshold", base.volume_threshold), 1),
        error_rate_threshold=_number(f"{key}.error_rate_threshold",
                                     body.get("error_rate_threshold", base.error_rate_threshold), 0.0, 1.0),
        window_secs=_number(f"{key}.window_secs", body.get("window_secs", base.window_secs), 0.001),
        half_open_max_calls=_integer(f"{key}.half_open_max_calls",
                                     body.get("half_open_max_calls", base.half_open_max_calls)),
        recovery_strategy=recovery,
        rate_limit_per_minute=rpm,
        rate_limit_burst=burst,
    )


def _breakers(tree: Mapping[str, Any], targets: tuple[str, ...]) -> dict[str, BreakerConfig]:
    section = _mapping("circuit_breakers", tree.get("circuit_breakers"))
    default = _breaker("default", _mapping("circuit_breakers.default", section.get("default")),
                       BreakerConfig(name="default"))
    result: dict[str, BreakerConfig] = {}
    for name in dict.fromkeys(targets + tuple(str(n) for n in section if n != "default")):
        rpm, burst = _DEFAULT_RATE_LIMITS.get(name, (default.rate_limit_per_minute, default.rate_limit_burst))
        base = BreakerConfig(**{**default.__dict__, "name": name, "display_name": "",
                                "rate_limit_per_minute": rpm, "rate_limit_burst": burst})
        result[name] = _breaker(name, _mapping(f"circuit_breakers.{name}", section.get(name)), base)
    return result


# ------------------------------------------------------------------------------- outbound HTTP

@dataclass(frozen=True)
class HttpSettings:
    """`notifications.http`: the shared outbound client."""

    allow_private: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    timeout_secs: float = 10.0
    connect_timeout_secs: float = 5.0
    max_attempts: int = 3
    backoff_initial_secs: float = 0.5
    backoff_max_secs: float = 30.0
    max_connections: int = 100
    max_keepalive_connections: int = 20


def _http(section: Mapping[str, Any], env: Mapping[str, str]) -> HttpSettings:
    key = "notifications.http"
    _known(key, section, {"allow_private", "timeout_secs", "connect_timeout_secs", "max_attempts",
                          "backoff_initial_secs", "backoff_max_secs", "max_connections",
                          "max_keepalive_connections"})
    networks = []
    listed = _strings(f"{key}.allow_private", section.get("allow_private"))
    listed += tuple(n.strip() for n in env.get("OUTBOUND_ALLOW_PRIVATE", "").split(",") if n.strip())
    for entry in listed:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(f"{key}.allow_private: {entry!r} is not an IP address or CIDR network "
                              "(the guard checks resolved addresses, so host names cannot be listed)") from None
    d = HttpSettings()
    return HttpSettings(
        allow_private=tuple(networks),
        timeout_secs=_number(f"{key}.timeout_secs", section.get("timeout_secs", d.timeout_secs), 0.001),
        connect_timeout_secs=_number(f"{key}.connect_timeout_secs",
                                     section.get("connect_timeout_secs", d.connect_timeout_secs), 0.001),
        max_attempts=_integer(f"{key}.max_attempts", section.get("max_attempts", d.max_attempts), 1),
        backoff_initial_secs=_number(f"{key}.backoff_initial_secs",
                                     section.get("backoff_initial_secs", d.backoff_initial_secs)),
        backoff_max_secs=_number(f"{key}.backoff_max_secs", section.get("backoff_max_secs", d.backoff_max_secs)),
        max_connections=_integer(f"{key}.max_connections", section.get("max_connections", d.max_connections), 1),
        max_keepalive_connections=_integer(f"{key}.max_keepalive_connections",
                                           section.get("max_keepalive_connections", d.max_keepalive_connections)),
    )


# ------------------------------------------------------------------------------- channels

def _secret(key: str, value: Any, env: Mapping[str, str], env_name: str) -> str:
    """A credential from config.yaml (`${VAR}` already expanded) or the environment; an unexpanded
    `${VAR}` (the variable is not set) counts as absent."""
    text = _text(key, value)
    if text.startswith("${") and text.endswith("}"):
        text = ""
    return text or env.get(env_name, "")


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


def _routes(key: str, value: Any, target_keys: tuple[str, ...]) -> tuple[tuple[Route, ...], str]:
    """`[{severity: [...], category: [...], <target>: X}, ..., {default: X}]` -> (rules, default)."""
    if value is None:
        return (), ""
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of rules")
    rules: list[Route] = []
    default = ""
    for i, body in enumerate(value):
        item = f"{key}[{i}]"
        body = _mapping(item, body)
        if "default" in body:
            default_value = body["default"]
            if isinstance(default_value, Mapping):  # JIRA's `- default: {project_key, issue_type}` form
                raise ConfigError(f"{item}.default: expected a single value")
            default = _text(f"{item}.default", default_value, required=True)
            continue
        _known(item, body, {"severity", "category", "service", *target_keys})
        target = next((str(body[k]) for k in target_keys if body.get(k)), "")
        if not target:
            raise ConfigError(f"{item}: needs one of {', '.join(target_keys)}")
        rules.append(Route(target=target, severity=_severities(f"{item}.severity", body.get("severity")),
                           category=tuple(c.lower() for c in _strings(f"{item}.category", body.get("category"))),
                           service=_strings(f"{item}.service", body.get("service"))))
    return tuple(rules), default


def route(rules: tuple[Route, ...], default: str, incident: Mapping[str, Any]) -> str:
    """The first matching rule's target, else the default."""
    return next((r.target for r in rules if r.matches(incident)), default)


def _per_severity(key: str, value: Any) -> dict[str, tuple[str, ...]]:
    body = _mapping(key, value)
    for severity in body:
        if severity not in SEVERITIES:
            raise ConfigError(f"{key}.{severity}: expected P0..P4 as keys")
    return {str(k): _strings(f"{key}.{k}", v) for k, v in body.items()}


def _severity_names(key: str, value: Any, default: Mapping[str, str]) -> dict[str, str]:
    body = _mapping(key, value)
    result = dict(default)
    for severity, name in body.items():
        if severity not in SEVERITIES:
            raise ConfigError(f"{key}.{severity}: expected P0..P4 as keys")
        result[str(severity)] = _text(f"{key}.{severity}", name, required=True)
    return result


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


def _slack(section: Mapping[str, Any], env: Mapping[str, str]) -> SlackSettings:
    key = "notifications.slack"
    _known(key, section, {"enabled", "webhook_url", "bot_token", "signing_secret", "api_url", "channel_routing",
                          "message_format", "mention_on_create", "mention_groups", "severity_emoji"})
    routes, default = _routes(f"{key}.channel_routing", section.get("channel_routing"), ("channel",))
    message_format = _text(f"{key}.message_format", section.get("message_format", "blocks"))
    if message_format not in ("blocks", "text"):
        raise ConfigError(f"{key}.message_format: expected blocks or text, got {message_format!r}")
    emoji = _mapping(f"{key}.severity_emoji", section.get("severity_emoji"))
    settings = SlackSettings(
        enabled=_flag(f"{key}.enabled", section.get("enabled", bool(section))),
        webhook_url=_secret(f"{key}.webhook_url", section.get("webhook_url"), env, "SLACK_WEBHOOK_URL"),
        bot_token=_secret(f"{key}.bot_token", section.get("bot_token"), env, "SLACK_BOT_TOKEN"),
        signing_secret=_secret(f"{key}.signing_secret", section.get("signing_secret"), env, "SLACK_SIGNING_SECRET"),
        api_url=_text(f"{key}.api_url", section.get("api_url")) or "https://slack.com/api",
        routes=routes, default_channel=default, message_format=message_format,
        mention_on_create=_flag(f"{key}.mention_on_create", section.get("mention_on_create", False)),
        mention_groups=_per_severity(f"{key}.mention_groups", section.get("mention_groups")),
        severity_emoji={str(k): _text(f"{key}.severity_emoji.{k}", v) for k, v in emoji.items()},
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


def _pagerduty(section: Mapping[str, Any], env: Mapping[str, str]) -> PagerDutySettings:
    key = "notifications.pagerduty"
    _known(key, section, {"enabled", "api_key", "integration_key", "events_url", "service_routing", "routing_keys",
                          "auto_resolve", "severity_mapping", "escalate_on_timeout", "escalation_timeout_minutes"})
    routes, default = _routes(f"{key}.service_routing", section.get("service_routing"), ("routing_key", "service_id"))
    mapping = _severity_names(f"{key}.severity_mapping", section.get("severity_mapping"),
                              PagerDutySettings().severity_mapping)
    for severity, name in mapping.items():
        if name not in PAGERDUTY_SEVERITIES:
            raise ConfigError(f"{key}.severity_mapping.{severity}: expected one of {', '.join(PAGERDUTY_SEVERITIES)}")
    keys = _mapping(f"{key}.routing_keys", section.get("routing_keys"))
    settings = PagerDutySettings(
        enabled=_flag(f"{key}.enabled", section.get("enabled", bool(section))),
        integration_key=_secret(f"{key}.integration_key", section.get("integration_key"), env,
                                "PAGERDUTY_INTEGRATION_KEY"),
        api_key=_secret(f"{key}.api_key", section.get("api_key"), env, "PAGERDUTY_API_KEY"),
        events_url=_text(f"{key}.events_url", section.get("events_url")) or PagerDutySettings().events_url,
        routes=routes, default_service=default,
        routing_keys={str(k): _secret(f"{key}.routing_keys.{k}", v, env, "") for k, v in keys.items()},
        auto_resolve=_flag(f"{key}.auto_resolve", section.get("auto_resolve", True)),
        severity_mapping=mapping,
        escalate_on_timeout=_flag(f"{key}.escalate_on_timeout", section.get("escalate_on_timeout", False)),
        escalation_timeout_minutes=_integer(f"{key}.escalation_timeout_minutes",
                                            section.get("escalation_timeout_minutes", 15), 1),
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


def _email(section: Mapping[str, Any], env: Mapping[str, str]) -> EmailSettings:
    key = "notifications.email"
    _known(key, section, {"enabled", "host", "port", "security", "username", "password", "from", "to", "ca_file",
                          "timeout_secs"})
    security = _text(f"{key}.security", section.get("security", "starttls"))
    if security not in ("starttls", "tls", "none"):
        raise ConfigError(f"{key}.security: expected starttls, tls or none, got {security!r}")
    settings = EmailSettings(
        enabled=_flag(f"{key}.enabled", section.get("enabled", bool(section))),
        host=_text(f"{key}.host", section.get("host")) or env.get("SMTP_HOST", "localhost"),
        port=_integer(f"{key}.port", section.get("port", env.get("SMTP_PORT", 0))),
        security=security,
        username=_secret(f"{key}.username", section.get("username"), env, "SMTP_USERNAME"),
        password=_secret(f"{key}.password", section.get("password"), env, "SMTP_PASSWORD"),
        from_address=_text(f"{key}.from", section.get("from")) or "incidents@localhost",
        to=_strings(f"{key}.to", section.get("to")),
        ca_file=_text(f"{key}.ca_file", section.get("ca_file")),
        timeout_secs=_number(f"{key}.timeout_secs", section.get("timeout_secs", 10.0), 0.001),
    )
    return settings


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


def _jira(section: Mapping[str, Any], env: Mapping[str, str]) -> JiraSettings:
    key = "integrations.jira"
    _known(key, section, {"enabled", "base_url", "authentication", "project_mapping", "field_mapping", "sync",
                          "incident_id_field", "severity_field", "labels", "severity_mapping", "routing"})
    auth = _mapping(f"{key}.authentication", section.get("authentication"))
    _known(f"{key}.authentication", auth, {"type", "username", "api_token"})
    if auth.get("type", "basic") != "basic":
        raise ConfigError(f"{key}.authentication.type: only basic (user + API token) is supported")
    projects: list[JiraProject] = []
    default = JiraSettings().default_project
    mapping = section.get("project_mapping") or []
    if not isinstance(mapping, list):
        raise ConfigError(f"{key}.project_mapping: expected a list")
    for i, body in enumerate(mapping):
        item = f"{key}.project_mapping[{i}]"
        body = _mapping(item, body)
        _known(item, body, {"category", "project_key", "issue_type", "default"})
        project = JiraProject(_text(f"{item}.project_key", body.get("project_key"), required=True),
                              _text(f"{item}.issue_type", body.get("issue_type"), required=True),
                              tuple(c.lower() for c in _strings(f"{item}.category", body.get("category"))))
        if "default" in body:  # `- default:` followed by the keys (the guide's form)
            default = project
        else:
            projects.append(project)
    fields_map = _mapping(f"{key}.field_mapping", section.get("field_mapping"))
    _known(f"{key}.field_mapping", fields_map, {"severity", "priority"})
    sync = _mapping(f"{key}.sync", section.get("sync"))
    _known(f"{key}.sync", sync, {"enabled", "bidirectional", "sync_interval_seconds", "status_mapping"})
    status_mapping = _mapping(f"{key}.sync.status_mapping", sync.get("status_mapping"))
    for name, target in status_mapping.items():
        if target not in ("RESOLVED", "CLOSED"):
            raise ConfigError(f"{key}.sync.status_mapping.{name}: expected RESOLVED or CLOSED, got {target!r}")
    base = JiraSettings()
    settings = JiraSettings(
        enabled=_flag(f"{key}.enabled", section.get("enabled", bool(section))),
        base_url=_text(f"{key}.base_url", section.get("base_url")).rstrip("/"),
        username=_secret(f"{key}.authentication.username", auth.get("username"), env, "JIRA_USERNAME"),
        api_token=_secret(f"{key}.authentication.api_token", auth.get("api_token"), env, "JIRA_API_TOKEN"),
        projects=tuple(projects), default_project=default,
        severity_names=_severity_names(f"{key}.field_mapping.severity", fields_map.get("severity"),
                                       base.severity_names),
        priority_names=_severity_names(f"{key}.field_mapping.priority", fields_map.get("priority"),
                                       base.priority_names),
        incident_id_field=_text(f"{key}.incident_id_field", section.get("incident_id_field")) or base.incident_id_field,
        severity_field=_text(f"{key}.severity_field", section.get("severity_field")),
        labels=_strings(f"{key}.labels", section.get("labels")) or base.labels,
        sync_enabled=_flag(f"{key}.sync.enabled", sync.get("enabled", False))
        and _flag(f"{key}.sync.bidirectional", sync.get("bidirectional", False)),
        sync_interval_secs=_integer(f"{key}.sync.sync_interval_seconds", sync.get("sync_interval_seconds", 300), 1),
        status_mapping={str(k): str(v) for k, v in status_mapping.items()} or base.status_mapping,
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


def _webhooks(value: Any, env: Mapping[str, str]) -> tuple[WebhookSettings, ...]:
    from app.services.templates import TemplateError, compile_template

    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("integrations.webhooks: expected a list of webhooks")
    result: list[WebhookSettings] = []
    for i, body in enumerate(value):
        key = f"integrations.webhooks[{i}]"
        body = _mapping(key, body)
        _known(key, body, {"name", "enabled", "url", "authentication", "triggers", "method", "headers",
                           "payload_template", "retry", "timeout_ms", "signing_secret", "signature_header"})
        name = _text(f"{key}.name", body.get("name"), required=True)
        if name in BUILTIN_TARGETS or any(w.name == name for w in result):
            raise ConfigError(f"{key}.name: {name!r} is already the name of another target")
        url = _text(f"{key}.url", body.get("url"), required=True)
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{key}.url: expected an http:// or https:// URL")
        auth = _mapping(f"{key}.authentication", body.get("authentication"))
        _known(f"{key}.authentication", auth, {"type", "token", "username", "password"})
        auth_type = _text(f"{key}.authentication.type", auth.get("type", "none" if not auth else "bearer"))
        if auth_type not in ("none", "bearer", "basic"):
            raise ConfigError(f"{key}.authentication.type: expected none, bearer or basic, got {auth_type!r}")
        token = _secret(f"{key}.authentication.token", auth.get("token"), env, "")
        if auth_type == "bearer" and not token:
            raise ConfigError(f"{key}.authentication.token: required for bearer authentication")
        triggers: list[WebhookTrigger] = []
        raw_triggers = body.get("triggers") or []
        if not isinstance(raw_triggers, list) or not raw_triggers:
            raise ConfigError(f"{key}.triggers: expected a non-empty list of {{event, conditions}}")
        for j, trig in enumerate(raw_triggers):
            tkey = f"{key}.triggers[{j}]"
            trig = _mapping(tkey, trig)
            _known(tkey, trig, {"event", "conditions"})
            event = _text(f"{tkey}.event", trig.get("event"), required=True)
            if event not in WEBHOOK_EVENTS:
                raise ConfigError(f"{tkey}.event: expected one of {', '.join(WEBHOOK_EVENTS)}, got {event!r}")
            cond = _mapping(f"{tkey}.conditions", trig.get("conditions"))
            _known(f"{tkey}.conditions", cond, {"severity", "category", "source", "service"})
            triggers.append(WebhookTrigger(
                event=event, severity=_severities(f"{tkey}.conditions.severity", cond.get("severity")),
                category=tuple(c.lower() for c in _strings(f"{tkey}.conditions.category", cond.get("category"))),
                source=_strings(f"{tkey}.conditions.source", cond.get("source")),
                service=_strings(f"{tkey}.conditions.service", cond.get("service"))))
        headers = _mapping(f"{key}.headers", body.get("headers"))
        method = _text(f"{key}.method", body.get("method", "POST")).upper()
        if method not in ("POST", "PUT", "PATCH"):
            raise ConfigError(f"{key}.method: expected POST, PUT or PATCH, got {method!r}")
        retry = _mapping(f"{key}.retry", body.get("retry"))
        _known(f"{key}.retry", retry, {"max_attempts", "backoff"})
        if retry.get("backoff", "exponential") != "exponential":
            raise ConfigError(f"{key}.retry.backoff: only exponential (with jitter) is supported")
        try:
            template = compile_template(_text(f"{key}.payload_template", body.get("payload_template"))
                                        or DEFAULT_WEBHOOK_TEMPLATE, f"{key}.payload_template")
        except TemplateError as exc:
            raise ConfigError(str(exc)) from None
        result.append(WebhookSettings(
            name=name, url=url, enabled=_flag(f"{key}.enabled", body.get("enabled", True)), method=method,
            headers={str(k): _text(f"{key}.headers.{k}", v) for k, v in headers.items()} or
            {"Content-Type": "application/json"},
            auth_type=auth_type, token=token,
            username=_text(f"{key}.authentication.username", auth.get("username")),
            password=_secret(f"{key}.authentication.password", auth.get("password"), env, ""),
            triggers=tuple(triggers), template=template,
            max_attempts=_integer(f"{key}.retry.max_attempts", retry.get("max_attempts", 3), 1),
            timeout_secs=_integer(f"{key}.timeout_ms", body.get("timeout_ms", 10_000), 1) / 1000.0,
            signing_secret=_secret(f"{key}.signing_secret", body.get("signing_secret"), env, ""),
            signature_header=_text(f"{key}.signature_header", body.get("signature_header"))
            or "X-Incident-Manager-Signature",
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


def _governance(section: Mapping[str, Any], env: Mapping[str, str]) -> GovernanceAuditSettings:
    key = "integrations.llm-governance-core.audit"
    audit = _mapping(key, section.get("audit"))
    _known(key, audit, {"endpoint", "authentication", "push_events", "batching"})
    auth = _mapping(f"{key}.authentication", audit.get("authentication"))
    _known(f"{key}.authentication", auth, {"type", "api_key"})
    if auth.get("type", "api_key") != "api_key":
        raise ConfigError(f"{key}.authentication.type: only api_key (X-API-Key) is supported")
    events = _strings(f"{key}.push_events", audit.get("push_events")) or AUDIT_EVENTS
    for event in events:
        if event not in AUDIT_EVENTS:
            raise ConfigError(f"{key}.push_events: expected some of {', '.join(AUDIT_EVENTS)}, got {event!r}")
    batching = _mapping(f"{key}.batching", audit.get("batching"))
    _known(f"{key}.batching", batching, {"enabled", "max_batch_size", "max_wait_ms"})
    settings = GovernanceAuditSettings(
        enabled=_flag("integrations.llm-governance-core.enabled", section.get("enabled", bool(audit))) and bool(audit),
        endpoint=_text(f"{key}.endpoint", audit.get("endpoint")),
        api_key=_secret(f"{key}.authentication.api_key", auth.get("api_key"), env, "GOVERNANCE_API_KEY"),
        push_events=events,
        batching=_flag(f"{key}.batching.enabled", batching.get("enabled", True)),
        max_batch_size=_integer(f"{key}.batching.max_batch_size", batching.get("max_batch_size", 100), 1),
        max_wait_ms=_integer(f"{key}.batching.max_wait_ms", batching.get("max_wait_ms", 60_000), 1),
    )
    if settings.enabled and not (settings.endpoint and settings.api_key):
        raise ConfigError(f"{key}: enabled, but endpoint or authentication.api_key (GOVERNANCE_API_KEY) is not set")
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


def _with_channel_list(notifications: Mapping[str, Any]) -> Mapping[str, Any]:
    """The reference README's form, `notifications.channels: [{type: slack, ...}]`: each entry is the
    section of its type (a section given by name wins; an entry then is an error, not ignored)."""
    channels = notifications.get("channels")
    if channels is None:
        return notifications
    if not isinstance(channels, list):
        raise ConfigError("notifications.channels: expected a list of {type, ...}")
    merged = dict(notifications)
    for i, body in enumerate(channels):
        body = dict(_mapping(f"notifications.channels[{i}]", body))
        kind = body.pop("type", None)
        if kind not in ("slack", "pagerduty", "email"):
            raise ConfigError(f"notifications.channels[{i}].type: expected slack, pagerduty or email, got {kind!r}")
        if kind in notifications:
            raise ConfigError(f"notifications.channels[{i}]: {kind} is also configured as notifications.{kind}; "
                              "keep one")
        merged[kind] = body
    return merged


def load_outbound(tree: Mapping[str, Any], env: Mapping[str, str]) -> OutboundSettings:
    """Validate the outbound sections of a config tree. Raises ConfigError naming the key."""
    notifications = _mapping("notifications", tree.get("notifications"))
    _known("notifications", notifications, {"http", "slack", "pagerduty", "email", "channels",
                                            "incident_url_template"})
    notifications = _with_channel_list(notifications)
    integrations = _mapping("integrations", tree.get("integrations"))
    http = _http(_mapping("notifications.http", notifications.get("http")), env)
    webhooks = _webhooks(integrations.get("webhooks"), env)
    targets = BUILTIN_TARGETS + tuple(w.name for w in webhooks)
    public = (env.get("PUBLIC_BASE_URL") or "").rstrip("/")
    template = _text("notifications.incident_url_template", notifications.get("incident_url_template")) \
        or "{base_url}/incidents/{id}"
    return OutboundSettings(
        breakers=_breakers(tree, targets), http=http,
        slack=_slack(_mapping("notifications.slack", notifications.get("slack")), env),
        pagerduty=_pagerduty(_mapping("notifications.pagerduty", notifications.get("pagerduty")), env),
        email=_email(_mapping("notifications.email", notifications.get("email")), env),
        jira=_jira(_mapping("integrations.jira", integrations.get("jira")), env),
        webhooks=webhooks,
        governance=_governance(_mapping("integrations.llm-governance-core",
                                        integrations.get("llm-governance-core")), env),
        incident_url_template=template,
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
