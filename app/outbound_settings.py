"""Outbound settings: `circuit_breakers:` and `notifications:` (plus `integrations.jira`,
`integrations.webhooks` and `integrations.llm-governance-core.audit`) of config.yaml, validated once
per Settings object. Every error names its key (docs/notifications.md lists every setting)."""

from __future__ import annotations

import ipaddress
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

from app.config import ConfigError, Settings, get_settings
from app.domain.severity import SEVERITIES

# Integration clients and channels that always have a breaker (docs/notifications.md, "Circuit breakers").
BUILTIN_TARGETS = ("sentinel", "shield", "edge-agent", "governance", "slack", "pagerduty", "jira", "email")


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


# ------------------------------------------------------------------------------- all outbound settings

@dataclass(frozen=True)
class OutboundSettings:
    breakers: Mapping[str, BreakerConfig]
    http: HttpSettings

    def breaker(self, name: str) -> BreakerConfig | None:
        found = self.breakers.get(name)
        if found is None:  # the README's `name:` field ("sentinel-api") names the same breaker
            found = next((b for b in self.breakers.values() if b.display_name and b.display_name == name), None)
        return found


def load_outbound(tree: Mapping[str, Any], env: Mapping[str, str]) -> OutboundSettings:
    """Validate the outbound sections of a config tree. Raises ConfigError naming the key."""
    notifications = _mapping("notifications", tree.get("notifications"))
    http = _http(_mapping("notifications.http", notifications.get("http")), env)
    targets = BUILTIN_TARGETS
    return OutboundSettings(breakers=_breakers(tree, targets), http=http)


_cache_lock = threading.Lock()
_cache: tuple[Settings, OutboundSettings] | None = None


def get_outbound_settings() -> OutboundSettings:
    """The outbound settings of the process's current Settings (re-read when those are reloaded)."""
    global _cache
    settings = get_settings()
    cached = _cache
    if cached is not None and cached[0] is settings:
        return cached[1]
    with _cache_lock:
        outbound = load_outbound(settings.raw, os.environ)
        _cache = (settings, outbound)
    return outbound
