"""Settings: environment > config.yaml > defaults; the reference README's config.yaml loads;
invalid values raise ConfigError naming the key (start-up then stops: see test_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ConfigError, load_settings

# The reference README's "Configuration File (config.yaml)", verbatim.
REFERENCE_CONFIG = '''instance_id: "standalone-001"

# Storage configuration
storage:
  type: "postgresql"  # or "memory"
  connection_string: "postgresql://localhost/incident_manager"
  pool_size: 20

# ML Configuration
ml:
  enabled: true
  confidence_threshold: 0.7
  model_path: "./models"
  auto_train: true
  training_batch_size: 100

# Enrichment Configuration
enrichment:
  enabled: true
  enable_historical: true
  enable_service: true
  enable_team: true
  timeout_secs: 10
  cache_ttl_secs: 300
  async_enrichment: true
  max_concurrent: 5
  similarity_threshold: 0.5

# Correlation Configuration
correlation:
  enabled: true
  time_window_secs: 300
  min_incidents: 2
  max_group_size: 50
  enable_source: true
  enable_type: true
  enable_similarity: true
  enable_tags: true
  enable_service: true

# Escalation Configuration
escalation:
  enabled: true
  default_timeout_secs: 300

# Deduplication Configuration
deduplication:
  window_secs: 900
  fingerprint_enabled: true

# Notification Configuration
notifications:
  channels:
    - type: "email"
      enabled: true
    - type: "slack"
      enabled: true
      webhook_url: "https://hooks.slack.com/..."
    - type: "pagerduty"
      enabled: true
      integration_key: "..."
'''

# The guide's Incident Manager config.yaml for Sentinel (§2), verbatim.
GUIDE_SENTINEL_CONFIG = '''integrations:
  llm-sentinel:
    enabled: true

    # Authentication
    authentication:
      type: api_key
      api_keys:
        - key_id: sentinel-prod-001
          key_hash: ${SENTINEL_API_KEY_HASH}
          permissions: ["event:create"]

    # Rate limiting
    rate_limit:
      requests_per_minute: 1000
      burst: 100

    # Severity mapping
    severity_mapping:
      critical: P0
      high: P1
      medium: P2
      low: P3
      info: P4

    # Auto-routing
    routing:
      default_team: platform-team
      escalation_policy: sentinel-escalation
'''


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    return {"DATA_DIR": str(tmp_path / "data")}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_embedded_defaults(base_env, tmp_path):
    s = load_settings(base_env)
    assert s.database_url == f"sqlite:///{tmp_path / 'data' / 'incident-manager.db'}"
    assert s.is_sqlite and s.embedded
    assert s.redis_url is None and s.broker_url == "filesystem://"
    assert s.api_port == 8080 and s.grpc_port == 50051
    assert s.max_body_bytes == 10 * 1024 * 1024 and s.max_batch_events == 1000
    assert s.rate_limit.requests_per_minute == 1000 and s.rate_limit.burst == 100
    assert s.deduplication.window_secs == 900 and s.correlation.time_window_secs == 300
    assert s.ml.confidence_threshold == 0.7
    assert all([s.enable_ml_classification, s.enable_enrichment, s.enable_correlation, s.enable_escalation])
    assert s.public_base_url is None


def test_embedded_secrets_persist_across_loads(base_env, tmp_path):
    first, second = load_settings(base_env), load_settings(base_env)
    assert first.jwt_secret == second.jwt_secret and len(first.jwt_secret) >= 32
    assert first.api_key_secret == second.api_key_secret
    assert (tmp_path / "data" / "jwt-secret").stat().st_mode & 0o777 == 0o600


def test_reference_readme_config_yaml_loads(base_env, tmp_path):
    s = load_settings({**base_env, "CONFIG_FILE": write(tmp_path, REFERENCE_CONFIG)})
    assert s.instance_id == "standalone-001"
    assert s.database_url == "postgresql+psycopg://localhost/incident_manager"
    assert s.database_pool_size == 20
    assert (s.ml.enabled, s.ml.confidence_threshold, s.ml.model_path, s.ml.auto_train, s.ml.training_batch_size) == (
        True, 0.7, "./models", True, 100)
    assert s.enrichment.timeout_secs == 10 and s.enrichment.cache_ttl_secs == 300
    assert s.enrichment.max_concurrent == 5 and s.enrichment.similarity_threshold == 0.5
    assert s.correlation.time_window_secs == 300 and s.correlation.max_group_size == 50
    assert s.correlation.enable_similarity is True
    assert s.escalation.default_timeout_secs == 300
    assert s.deduplication.window_secs == 900
    assert s.raw["notifications"]["channels"][1]["webhook_url"] == "https://hooks.slack.com/..."


def test_guide_sentinel_integration_config_loads(base_env, tmp_path):
    s = load_settings({**base_env, "CONFIG_FILE": write(tmp_path, GUIDE_SENTINEL_CONFIG),
                       "SENTINEL_API_KEY_HASH": "abc"})
    sentinel = s.integration("llm-sentinel")
    assert sentinel.default_team == "platform-team"
    assert sentinel.escalation_policy == "sentinel-escalation"
    assert dict(sentinel.severity_mapping)["high"] == "P1"


def test_environment_beats_config_yaml(base_env, tmp_path):
    path = write(tmp_path, REFERENCE_CONFIG)
    s = load_settings({**base_env, "CONFIG_FILE": path, "DATABASE_URL": "postgres://u:p@db:5432/im",
                       "DATABASE_POOL_SIZE": "7", "ENABLE_ML_CLASSIFICATION": "false"})
    assert s.database_url == "postgresql+psycopg://u:p@db:5432/im"
    assert s.database_pool_size == 7
    assert s.enable_ml_classification is False and s.enable_enrichment is True


def test_memory_storage_means_the_embedded_sqlite_file(base_env, tmp_path):
    s = load_settings({**base_env, "CONFIG_FILE": write(tmp_path, 'storage:\n  type: "memory"\n')})
    assert s.is_sqlite


def test_feature_flag_from_yaml_section(base_env, tmp_path):
    s = load_settings({**base_env, "CONFIG_FILE": write(tmp_path, "correlation:\n  enabled: false\n")})
    assert s.enable_correlation is False and s.correlation.enabled is False


def test_broker_follows_redis_unless_set(base_env):
    s = load_settings({**base_env, "REDIS_URL": "redis://127.0.0.1:6379/3"})
    assert s.broker_url == "redis://127.0.0.1:6379/3" and s.embedded  # still the SQLite file
    s = load_settings({**base_env, "REDIS_URL": "redis://127.0.0.1:6379/3", "DATABASE_URL": "postgresql://h/im"})
    assert not s.embedded
    s = load_settings({**base_env, "REDIS_URL": "redis://r:6379/0", "CELERY_BROKER_URL": "redis://b:6379/1"})
    assert s.broker_url == "redis://b:6379/1"


def test_public_base_url_trailing_slash(base_env):
    assert load_settings({**base_env, "PUBLIC_BASE_URL": "https://incidents.example.com/"}).public_base_url == \
        "https://incidents.example.com"


@pytest.mark.parametrize("env,key", [
    ({"API_PORT": "abc"}, "API_PORT"),
    ({"API_PORT": "70000"}, "API_PORT"),
    ({"API_PORT": "0"}, "API_PORT"),
    ({"GRPC_PORT": "-5"}, "GRPC_PORT"),
    ({"WORKER_METRICS_PORT": "x"}, "WORKER_METRICS_PORT"),
    ({"DATABASE_POOL_SIZE": "0"}, "DATABASE_POOL_SIZE"),
    ({"DATABASE_URL": "mysql://localhost/im"}, "DATABASE_URL"),
    ({"REDIS_URL": "http://localhost:6379"}, "REDIS_URL"),
    ({"ENABLE_ML_CLASSIFICATION": "maybe"}, "ENABLE_ML_CLASSIFICATION"),
    ({"ENABLE_ESCALATION": "2"}, "ENABLE_ESCALATION"),
    ({"JWT_SECRET": "short"}, "JWT_SECRET"),
    ({"JWT_ALGORITHMS": "HS256,none"}, "JWT_ALGORITHMS"),
    ({"MAX_BODY_BYTES": "ten"}, "MAX_BODY_BYTES"),
    ({"MAX_BATCH_EVENTS": "0"}, "MAX_BATCH_EVENTS"),
    ({"TASK_MAX_RETRIES": "1000"}, "TASK_MAX_RETRIES"),
    ({"OUTBOX_RELAY_AFTER_SECS": "0"}, "OUTBOX_RELAY_AFTER_SECS"),
    ({"CONFIG_FILE": "/nonexistent/config.yaml"}, "CONFIG_FILE"),
])
def test_invalid_environment_names_the_key(base_env, env, key):
    with pytest.raises(ConfigError) as info:
        load_settings({**base_env, **env})
    assert str(info.value).startswith(key)


@pytest.mark.parametrize("yaml_text,key", [
    ("ml:\n  confidence_threshold: 1.5\n", "ml.confidence_threshold"),
    ("ml:\n  confidence_threshold: high\n", "ml.confidence_threshold"),
    ("ml:\n  enabled: perhaps\n", "ml.enabled"),
    ("ml:\n  confidance_threshold: 0.5\n", "ml.confidance_threshold"),
    ("correlation:\n  time_window_secs: -3\n", "correlation.time_window_secs"),
    ("correlation:\n  time_window_secs: soon\n", "correlation.time_window_secs"),
    ("deduplication:\n  window_secs: [1]\n", "deduplication.window_secs"),
    ("deduplication:\n  fingerprint_fields: title\n", "deduplication.fingerprint_fields"),
    ("enrichment: 5\n", "enrichment"),
    ("rate_limit:\n  burst: lots\n", "rate_limit.burst"),
    ("integrations:\n  llm-sentinel:\n    severity_mapping:\n      high: P9\n",
     "integrations.llm-sentinel.severity_mapping.high"),
    ("integrations:\n  llm-sentinel:\n    severity_mapping: [P0]\n", "integrations.llm-sentinel.severity_mapping"),
    ("integrations:\n  llm-sentinel:\n    enabled: sometimes\n", "integrations.llm-sentinel.enabled"),
    ("integrations:\n  llm-sentinel:\n    routing: team-a\n", "integrations.llm-sentinel.routing"),
    ("- just\n- a list\n", "CONFIG_FILE"),
    ("ml: [unclosed\n", "CONFIG_FILE"),
])
def test_invalid_config_yaml_names_the_key(base_env, tmp_path, yaml_text, key):
    with pytest.raises(ConfigError) as info:
        load_settings({**base_env, "CONFIG_FILE": write(tmp_path, yaml_text)})
    assert str(info.value).startswith(key), str(info.value)


@pytest.mark.parametrize("yaml_text,key", [
    ("colour: red\n", "colour"),  # a misspelt section is not silently ignored
    ("storage:\n  type: mysql\n", "storage.type"),
    ("routing: {rules: [{match: {severity: P9}, team: t}]}\n", "routing.rules[0].match.severity"),
    ("correlation:\n  min_incidents: x\n", "correlation.min_incidents"),  # accepted key, still typed
    ("enrichment:\n  async_enrichment: sometimes\n", "enrichment.async_enrichment"),
    # A reference key with no setting takes only the value describing what the system does.
    ("enrichment:\n  async_enrichment: false\n", "enrichment.async_enrichment"),
    ("correlation:\n  min_incidents: 3\n", "correlation.min_incidents"),
    ("deduplication:\n  fingerprint_enabled: false\n", "deduplication.fingerprint_enabled"),
    ("integrations:\n  llm-sentinel:\n    enabled: false\n", "integrations.llm-sentinel.enabled"),
    ("ml:\n  training_batch_size: 7.5\n", "ml.training_batch_size"),  # never truncated to 7
])
def test_more_invalid_config_yaml_names_the_key(base_env, tmp_path, yaml_text, key):
    with pytest.raises(ConfigError) as info:
        load_settings({**base_env, "CONFIG_FILE": write(tmp_path, yaml_text)})
    assert str(info.value).startswith(key), str(info.value)


def test_every_problem_is_listed(base_env, tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings({**base_env,
                       "CONFIG_FILE": write(tmp_path, "ml:\n  enabled: perhaps\n  confidence_threshold: 2\n")})
    assert "ml.enabled" in str(info.value) and "ml.confidence_threshold" in str(info.value)


def test_reference_keys_without_a_setting_are_accepted_not_kept(base_env, tmp_path):
    s = load_settings({**base_env, "CONFIG_FILE": write(tmp_path, REFERENCE_CONFIG)})
    assert not hasattr(s.correlation, "min_incidents") and not hasattr(s.enrichment, "async_enrichment")
    assert not hasattr(s.deduplication, "fingerprint_enabled")


def test_instance_id_environment_wins_and_secrets_stay_out_of_repr(base_env, tmp_path):
    s = load_settings({**base_env, "CONFIG_FILE": write(tmp_path, REFERENCE_CONFIG), "INSTANCE_ID": "eu-1",
                       "JWT_SECRET": "s" * 40, "API_KEY_SECRET": "k" * 40})
    assert s.instance_id == "eu-1"
    assert "s" * 40 not in repr(s) and "k" * 40 not in repr(s)


def test_empty_variable_means_unset(base_env):
    s = load_settings({**base_env, "API_PORT": "", "REDIS_URL": ""})
    assert s.api_port == 8080 and s.redis_url is None


def test_log_lines_carry_the_instance():
    import json
    import logging

    from app.logging import JsonFormatter

    record = logging.LogRecord("im", logging.INFO, __file__, 1, "hello", None, None)
    assert json.loads(JsonFormatter("eu-1").format(record))["instance"] == "eu-1"
