"""Settings: read once from the environment and an optional config.yaml, validated, typed.

Precedence: environment variable > config.yaml > built-in default. With nothing set the system runs
on the embedded default (a SQLite file and Celery's server-less filesystem broker under DATA_DIR).
Each section lives in its own module and is validated by marshmallow schemas (the API's validation
library); invalid configuration raises ConfigError naming the key, and start-up stops.
docs/foundation.md ("Configuration") has the layout and the reasons.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import yaml

from app.config.doors import load_doors
from app.config.features import (
    CorrelationSettings,
    DeduplicationSettings,
    EnrichmentSettings,
    EscalationSettings,
    MLSettings,
    RateLimitSettings,
    load_features,
)
from app.config.graphql import GraphQLSettings, load_graphql
from app.config.integrations import (
    DEFAULT_SEVERITY_MAPPING,
    IntegrationSettings,
    RoutingRule,
    load_integrations,
    load_routing_rules,
)
from app.config.outbound import load_outbound
from app.config.remediation import load_playbook_tasks, load_remediation
from app.config.runtime import load_runtime
from app.config.schema import ConfigError
from app.config.security import load_security
from app.config.settings import Settings
from app.config.storage import load_storage

__all__ = [
    "DEFAULT_SEVERITY_MAPPING", "ConfigError", "CorrelationSettings", "DeduplicationSettings", "EnrichmentSettings",
    "EscalationSettings", "GraphQLSettings", "IntegrationSettings", "MLSettings", "RateLimitSettings", "RoutingRule",
    "Settings",
    "get_settings", "load_settings", "reset_settings_cache",
]

# config.yaml's top-level keys: the reference README's, plus `routing` (docs/pipeline.md), `sla`
# (docs/escalation.md) and `graphql` (docs/graphql.md).
SECTIONS = ("instance_id", "storage", "rate_limit", "ml", "enrichment", "correlation", "escalation",
            "deduplication", "integrations", "routing", "notifications", "circuit_breakers", "sla",
            "graphql")


def _read_config_file(env: Mapping[str, str]) -> Mapping[str, Any]:
    """CONFIG_FILE, else ./config.yaml when present; `${VAR}` expands from the process environment."""
    config_file = env.get("CONFIG_FILE") or ("config.yaml" if Path("config.yaml").exists() else None)
    if not config_file:
        return {}
    path = Path(config_file)
    if not path.exists():
        raise ConfigError(f"CONFIG_FILE: {config_file} does not exist")
    try:
        tree = yaml.safe_load(os.path.expandvars(path.read_text())) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"CONFIG_FILE: {config_file} is not valid YAML: {exc}") from None
    if not isinstance(tree, Mapping):
        raise ConfigError(f"CONFIG_FILE: {config_file} must hold a mapping at the top level")
    unknown = sorted(str(key) for key in tree if key not in SECTIONS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section in {config_file} (known: {', '.join(SECTIONS)})")
    return tree


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate settings. Raises ConfigError naming the first invalid key."""
    # An empty variable means unset (12-factor tooling often exports VAR= for "not configured").
    env = {key: value for key, value in (os.environ if env is None else env).items() if value != ""}
    tree = _read_config_file(env)
    storage = load_storage(tree, env)
    return Settings(
        **load_runtime(tree, env),
        **storage,
        **load_doors(env),
        **load_security(env, storage["data_dir"]),
        **load_features(tree, env),
        integrations=load_integrations(tree),
        routing_rules=load_routing_rules(tree),
        graphql=load_graphql(tree, env),
        raw=tree,
        outbound=load_outbound(tree, env),
        remediation=load_remediation(tree, env),
        playbook_tasks=load_playbook_tasks(env),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded on first use."""
    return load_settings()


def reset_settings_cache() -> None:
    get_settings.cache_clear()
