"""Settings: read once from the environment and an optional config.yaml, validated, typed.

Precedence: environment variable > config.yaml > built-in default. With nothing set the system runs
on the embedded default (a SQLite file and Celery's server-less filesystem broker under DATA_DIR).
Invalid configuration raises ConfigError naming the key, and start-up stops.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import yaml

from app.domain.severity import DEFAULT_MAPPING, SEVERITIES


class ConfigError(ValueError):
    """Invalid configuration; the message names the offending key."""


DEFAULT_SEVERITY_MAPPING: dict[str, str] = dict(DEFAULT_MAPPING)


@dataclass(frozen=True)
class RateLimitSettings:
    requests_per_minute: int = 1000
    burst: int = 100


@dataclass(frozen=True)
class MLSettings:
    enabled: bool = True
    confidence_threshold: float = 0.7
    model_path: str = "./models"
    auto_train: bool = True
    training_batch_size: int = 100


@dataclass(frozen=True)
class EnrichmentSettings:
    enabled: bool = True
    enable_historical: bool = True
    enable_service: bool = True
    enable_team: bool = True
    timeout_secs: float = 10.0
    cache_ttl_secs: int = 300
    async_enrichment: bool = True
    max_concurrent: int = 5
    similarity_threshold: float = 0.5
    # How many recent incidents the similar-incidents search compares against, and how many it keeps.
    history_size: int = 500
    similar_limit: int = 5


@dataclass(frozen=True)
class CorrelationSettings:
    enabled: bool = True
    time_window_secs: int = 300
    min_incidents: int = 2
    max_group_size: int = 50
    enable_source: bool = True
    enable_type: bool = True
    enable_similarity: bool = True
    enable_tags: bool = True
    enable_service: bool = True
    # Weighted score of the enabled strategies (normalised by the sum of enabled weights).
    score_threshold: float = 0.5
    source_weight: float = 0.15
    type_weight: float = 0.2
    similarity_weight: float = 0.3
    tags_weight: float = 0.15
    service_weight: float = 0.2
    # Candidates compared per batch: the most recent incidents inside the time window.
    max_candidates: int = 500


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


@dataclass(frozen=True)
class EscalationSettings:
    enabled: bool = True
    default_timeout_secs: int = 300


@dataclass(frozen=True)
class DeduplicationSettings:
    window_secs: int = 900
    fingerprint_enabled: bool = True
    fingerprint_fields: tuple[str, ...] = ("source", "event_type", "title", "resource_ids")


@dataclass(frozen=True)
class IntegrationSettings:
    """Per-integration settings (`integrations.<name>` in config.yaml, keyed by event source)."""

    name: str
    enabled: bool = True
    severity_mapping: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_SEVERITY_MAPPING))
    default_team: str | None = None
    escalation_policy: str | None = None
    auto_page: bool = False


@lru_cache(maxsize=1024)  # ingest asks once per incident row; sources are few
def _default_integration(source: str) -> IntegrationSettings:
    return IntegrationSettings(name=source)


@dataclass(frozen=True)
class Settings:
    instance_id: str
    data_dir: Path
    database_url: str
    database_pool_size: int
    redis_url: str | None
    broker_url: str
    api_host: str
    api_port: int
    grpc_host: str
    grpc_port: int
    worker_metrics_port: int | None
    public_base_url: str | None
    api_key_secret: bytes
    jwt_secret: str
    jwks_url: str | None
    jwt_algorithms: tuple[str, ...]
    log_level: str
    max_body_bytes: int
    max_batch_events: int
    enable_ml_classification: bool
    enable_enrichment: bool
    enable_correlation: bool
    enable_escalation: bool
    prometheus_url: str | None
    metrics_multiproc_dir: str | None
    pipeline_batch_size: int
    outbox_relay_after_secs: int
    task_max_retries: int
    rate_limit: RateLimitSettings
    ml: MLSettings
    enrichment: EnrichmentSettings
    correlation: CorrelationSettings
    escalation: EscalationSettings
    deduplication: DeduplicationSettings
    integrations: Mapping[str, IntegrationSettings]
    raw: Mapping[str, Any] = field(default_factory=dict)
    # Doors (gRPC mTLS, WebSocket limits): see _door_settings and docs/doors.md.
    grpc_tls_cert: str | None = None
    grpc_tls_key: str | None = None
    grpc_client_ca: str | None = None
    grpc_allowed_identities: tuple[str, ...] = ()
    grpc_max_workers: int = 32
    ws_max_message_bytes: int = 4 * 1024 * 1024
    ws_idle_timeout_secs: int = 120
    routing_rules: tuple[RoutingRule, ...] = ()

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def embedded(self) -> bool:
        """True when running without Postgres/Redis servers (SQLite + filesystem broker)."""
        return self.is_sqlite or self.redis_url is None

    def integration(self, source: str) -> IntegrationSettings:
        found = self.integrations.get(source)
        if found is None and source.startswith("llm-"):
            found = self.integrations.get(source[4:])
        return found or _default_integration(source)


# ---------------------------------------------------------------- parsing helpers

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{key}: expected a boolean (true/false), got {value!r}")


def _int(key: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{key}: must be <= {maximum}, got {number}")
    return number


def _float(key: str, value: Any, minimum: float | None = None, maximum: float | None = None) -> float:
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{key}: must be <= {maximum}, got {number}")
    return number


def _section(tree: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = tree.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping in config.yaml, got {type(value).__name__}")
    return value


def _typed_section(cls: type, prefix: str, section: Mapping[str, Any]) -> Any:
    """Build a frozen dataclass from a config.yaml section, converting by the default's type."""
    defaults = cls()
    kwargs: dict[str, Any] = {}
    known = set(defaults.__dataclass_fields__)
    for key, value in section.items():
        if key not in known:
            raise ConfigError(f"{prefix}.{key}: unknown setting (known: {', '.join(sorted(known))})")
        current = getattr(defaults, key)
        full = f"{prefix}.{key}"
        if isinstance(current, bool):
            kwargs[key] = _bool(full, value)
        elif isinstance(current, int):
            kwargs[key] = _int(full, value, minimum=0)
        elif isinstance(current, float):
            kwargs[key] = _float(full, value, minimum=0.0)
        elif isinstance(current, tuple):
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{full}: expected a list of strings")
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = str(value)
    return cls(**{**{k: getattr(defaults, k) for k in known}, **kwargs})


def _severity_mapping(key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping of source severity to P0..P4")
    mapping = dict(DEFAULT_SEVERITY_MAPPING)
    for source_severity, severity in value.items():
        if str(severity) not in SEVERITIES:
            raise ConfigError(f"{key}.{source_severity}: expected one of {', '.join(SEVERITIES)}, got {severity!r}")
        mapping[str(source_severity).lower()] = str(severity)
    return mapping


def _integrations(tree: Mapping[str, Any]) -> dict[str, IntegrationSettings]:
    result: dict[str, IntegrationSettings] = {}
    for name, body in _section(tree, "integrations").items():
        if not isinstance(body, Mapping):
            continue  # e.g. `webhooks:` is a list, read by the notification settings
        prefix = f"integrations.{name}"
        routing = body.get("routing") or {}
        if not isinstance(routing, Mapping):
            raise ConfigError(f"{prefix}.routing: expected a mapping")
        result[name] = IntegrationSettings(
            name=name,
            enabled=_bool(f"{prefix}.enabled", body.get("enabled", True)),
            severity_mapping=_severity_mapping(f"{prefix}.severity_mapping", body.get("severity_mapping") or {}),
            default_team=routing.get("default_team"),
            escalation_policy=routing.get("escalation_policy"),
            auto_page=_bool(f"{prefix}.routing.auto_page", routing.get("auto_page", False)),
        )
    return result


def _string_list(key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int)) for v in value):
        raise ConfigError(f"{key}: expected a string or a list of strings")
    return tuple(str(v) for v in value)


def _routing_rules(tree: Mapping[str, Any]) -> tuple[RoutingRule, ...]:
    """`routing: {rules: [{name, match: {severity, category, source, service, tags}, team, escalation_policy}]}`."""
    rules = _section(tree, "routing").get("rules") or []
    if not isinstance(rules, list):
        raise ConfigError("routing.rules: expected a list of rules")
    result: list[RoutingRule] = []
    for i, body in enumerate(rules):
        prefix = f"routing.rules[{i}]"
        if not isinstance(body, Mapping):
            raise ConfigError(f"{prefix}: expected a mapping")
        match = body.get("match") or {}
        if not isinstance(match, Mapping):
            raise ConfigError(f"{prefix}.match: expected a mapping")
        unknown = set(match) - {"severity", "category", "source", "service", "tags"}
        if unknown:
            raise ConfigError(f"{prefix}.match.{sorted(unknown)[0]}: unknown key "
                              "(known: category, service, severity, source, tags)")
        if not body.get("team") and not body.get("escalation_policy"):
            raise ConfigError(f"{prefix}: needs a team or an escalation_policy")
        tags = match.get("tags") or {}
        if not isinstance(tags, Mapping):
            raise ConfigError(f"{prefix}.match.tags: expected a mapping of tag to value")
        severities = _string_list(f"{prefix}.match.severity", match.get("severity"))
        for severity in severities:
            if severity not in SEVERITIES:
                raise ConfigError(f"{prefix}.match.severity: expected P0..P4, got {severity!r}")
        result.append(RoutingRule(
            name=str(body.get("name") or f"rule-{i + 1}"),
            team=str(body["team"]) if body.get("team") else None,
            escalation_policy=str(body["escalation_policy"]) if body.get("escalation_policy") else None,
            severity=severities,
            category=tuple(c.lower() for c in _string_list(f"{prefix}.match.category", match.get("category"))),
            source=_string_list(f"{prefix}.match.source", match.get("source")),
            service=_string_list(f"{prefix}.match.service", match.get("service")),
            tags={str(k): str(v) for k, v in tags.items()},
        ))
    return tuple(result)


def _persistent_secret(data_dir: Path, name: str) -> str:
    """A random secret kept in DATA_DIR so the embedded default survives restarts."""
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


def _door_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """GRPC_TLS_CERT + GRPC_TLS_KEY: TLS (callers authenticate with bearer metadata); with GRPC_CLIENT_CA
    too: mTLS, client certificates required and checked against GRPC_ALLOWED_IDENTITIES (comma-separated
    subject CNs or SANs). GRPC_MAX_WORKERS, WS_MAX_MESSAGE_BYTES, WS_IDLE_TIMEOUT_SECS."""
    tls = {name: env.get(name) or None for name in ("GRPC_TLS_CERT", "GRPC_TLS_KEY", "GRPC_CLIENT_CA")}
    given = [name for name, value in tls.items() if value]
    if given and not (tls["GRPC_TLS_CERT"] and tls["GRPC_TLS_KEY"]):
        missing = sorted({"GRPC_TLS_CERT", "GRPC_TLS_KEY"} - set(given))
        raise ConfigError(f"{', '.join(missing)}: TLS needs GRPC_TLS_CERT and GRPC_TLS_KEY together")
    for name in given:
        if not Path(str(tls[name])).is_file():
            raise ConfigError(f"{name}: {tls[name]} is not a readable file")
    identities = tuple(i.strip() for i in env.get("GRPC_ALLOWED_IDENTITIES", "").split(",") if i.strip())
    if tls["GRPC_CLIENT_CA"] and not identities:
        raise ConfigError("GRPC_ALLOWED_IDENTITIES: with mTLS on, list the client identities "
                          "(certificate CN or SAN) allowed in")
    return {
        "grpc_tls_cert": tls["GRPC_TLS_CERT"],
        "grpc_tls_key": tls["GRPC_TLS_KEY"],
        "grpc_client_ca": tls["GRPC_CLIENT_CA"],
        "grpc_allowed_identities": identities,
        "grpc_max_workers": _int("GRPC_MAX_WORKERS", env.get("GRPC_MAX_WORKERS", 32), 1, 1024),
        "ws_max_message_bytes": _int("WS_MAX_MESSAGE_BYTES", env.get("WS_MAX_MESSAGE_BYTES", 4 * 1024 * 1024), 1024),
        "ws_idle_timeout_secs": _int("WS_IDLE_TIMEOUT_SECS", env.get("WS_IDLE_TIMEOUT_SECS", 120), 1, 86_400),
    }


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate settings. Raises ConfigError naming the first invalid key."""
    env = dict(os.environ if env is None else env)
    tree: Mapping[str, Any] = {}
    config_file = env.get("CONFIG_FILE") or ("config.yaml" if Path("config.yaml").exists() else None)
    if config_file:
        path = Path(config_file)
        if not path.exists():
            raise ConfigError(f"CONFIG_FILE: {config_file} does not exist")
        try:
            loaded = yaml.safe_load(os.path.expandvars(path.read_text())) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"CONFIG_FILE: {config_file} is not valid YAML: {exc}") from None
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"CONFIG_FILE: {config_file} must hold a mapping at the top level")
        tree = loaded

    data_dir = Path(env.get("DATA_DIR", "var")).resolve()
    storage = _section(tree, "storage")
    database_url = env.get("DATABASE_URL") or storage.get("connection_string")
    if storage.get("type") == "memory" and not env.get("DATABASE_URL"):
        database_url = None
    if not database_url:
        database_url = f"sqlite:///{data_dir / 'incident-manager.db'}"
    if database_url.startswith("postgres://"):
        database_url = "postgresql://" + database_url[len("postgres://"):]
    if database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://"):]
    if not (database_url.startswith("postgresql+psycopg://") or database_url.startswith("sqlite:///")):
        raise ConfigError(f"DATABASE_URL: expected postgresql://… or sqlite:///…, got {database_url.split(':')[0]}://…")

    redis_url = env.get("REDIS_URL") or None
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("REDIS_URL: expected redis://host:port/db")
    broker_url = env.get("CELERY_BROKER_URL") or redis_url or "filesystem://"

    def flag(name: str, section: str) -> bool:
        if name in env:
            return _bool(name, env[name])
        return _bool(f"{section}.enabled", _section(tree, section).get("enabled", True))

    ml = _typed_section(MLSettings, "ml", _section(tree, "ml"))
    if not 0.0 <= ml.confidence_threshold <= 1.0:
        raise ConfigError(f"ml.confidence_threshold: must be within 0..1, got {ml.confidence_threshold}")
    rate_limit = _typed_section(RateLimitSettings, "rate_limit", _section(tree, "rate_limit"))

    api_key_secret = env.get("API_KEY_SECRET") or _persistent_secret(data_dir, "api-key-secret")
    jwt_secret = env.get("JWT_SECRET") or _persistent_secret(data_dir, "jwt-secret")
    if len(jwt_secret) < 32:
        raise ConfigError("JWT_SECRET: must be at least 32 characters")

    worker_metrics = env.get("WORKER_METRICS_PORT")
    algorithms = tuple(a.strip() for a in env.get("JWT_ALGORITHMS", "HS256").split(",") if a.strip())
    for algorithm in algorithms:
        if algorithm.lower() == "none":
            raise ConfigError("JWT_ALGORITHMS: 'none' is never accepted")

    return Settings(
        instance_id=str(tree.get("instance_id") or env.get("INSTANCE_ID") or "standalone-001"),
        data_dir=data_dir,
        database_url=database_url,
        database_pool_size=_int("DATABASE_POOL_SIZE", env.get("DATABASE_POOL_SIZE", storage.get("pool_size", 10)), 1),
        redis_url=redis_url,
        broker_url=broker_url,
        api_host=env.get("API_HOST", "0.0.0.0"),
        api_port=_int("API_PORT", env.get("API_PORT", 8080), 1, 65535),
        grpc_host=env.get("GRPC_HOST", "0.0.0.0"),
        grpc_port=_int("GRPC_PORT", env.get("GRPC_PORT", 50051), 1, 65535),
        worker_metrics_port=_int("WORKER_METRICS_PORT", worker_metrics, 1, 65535) if worker_metrics else None,
        public_base_url=(env.get("PUBLIC_BASE_URL") or "").rstrip("/") or None,
        api_key_secret=api_key_secret.encode(),
        jwt_secret=jwt_secret,
        jwks_url=env.get("JWKS_URL") or None,
        jwt_algorithms=algorithms,
        log_level=env.get("LOG_LEVEL", "INFO").upper(),
        max_body_bytes=_int("MAX_BODY_BYTES", env.get("MAX_BODY_BYTES", 10 * 1024 * 1024), 1024),
        max_batch_events=_int("MAX_BATCH_EVENTS", env.get("MAX_BATCH_EVENTS", 1000), 1, 100_000),
        enable_ml_classification=flag("ENABLE_ML_CLASSIFICATION", "ml"),
        enable_enrichment=flag("ENABLE_ENRICHMENT", "enrichment"),
        enable_correlation=flag("ENABLE_CORRELATION", "correlation"),
        enable_escalation=flag("ENABLE_ESCALATION", "escalation"),
        prometheus_url=env.get("PROMETHEUS_URL") or None,
        metrics_multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
        pipeline_batch_size=_int("PIPELINE_BATCH_SIZE", env.get("PIPELINE_BATCH_SIZE", 1000), 1, 10_000),
        outbox_relay_after_secs=_int("OUTBOX_RELAY_AFTER_SECS", env.get("OUTBOX_RELAY_AFTER_SECS", 30), 1),
        task_max_retries=_int("TASK_MAX_RETRIES", env.get("TASK_MAX_RETRIES", 5), 0, 100),
        rate_limit=rate_limit,
        ml=ml,
        enrichment=_typed_section(EnrichmentSettings, "enrichment", _section(tree, "enrichment")),
        correlation=_typed_section(CorrelationSettings, "correlation", _section(tree, "correlation")),
        escalation=_typed_section(EscalationSettings, "escalation", _section(tree, "escalation")),
        deduplication=_typed_section(DeduplicationSettings, "deduplication", _section(tree, "deduplication")),
        integrations=_integrations(tree),
        raw=tree,
        **_door_settings(env),
        routing_rules=_routing_rules(tree),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded on first use."""
    return load_settings()


def reset_settings_cache() -> None:
    get_settings.cache_clear()
