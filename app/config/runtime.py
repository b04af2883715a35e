"""How the processes run and report: INSTANCE_ID (on every log line), LOG_LEVEL, the worker's
metrics port, whether /metrics needs a key, pipeline batch size, outbox relay delay, task retries,
PROMETHEUS_URL (enrichment)."""

from __future__ import annotations

from typing import Any, Mapping

from marshmallow import EXCLUDE, Schema, fields, validate

from app.config.schema import Bool, ConfigError, Int, load

LOG_LEVELS = ("DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL")


class _RuntimeEnvSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    instance_id = fields.String(data_key="INSTANCE_ID", load_default=None)
    log_level = fields.Function(deserialize=lambda value: str(value).strip().upper(), data_key="LOG_LEVEL",
                                validate=validate.OneOf(LOG_LEVELS), load_default="INFO")
    worker_metrics_port = Int(data_key="WORKER_METRICS_PORT", validate=validate.Range(min=1, max=65535),
                              load_default=None)
    # /metrics answers without credentials (as /health does, CONTRACT); true makes it ask for any key
    metrics_require_key = Bool(data_key="METRICS_REQUIRE_KEY", load_default=False)
    # /health's full check (database, broker, backlog queries) is reused this long per process: the
    # endpoint is open, and a caller polling it in a loop must not cost a query storm
    health_cache_secs = fields.Float(data_key="HEALTH_CACHE_SECS", validate=validate.Range(min=0, max=60),
                                     load_default=1.0)
    pipeline_batch_size = Int(data_key="PIPELINE_BATCH_SIZE", validate=validate.Range(min=1, max=10_000),
                              load_default=1000)
    # true: each pipeline stage is its own Celery task (a chain per batch); false: one task per batch
    pipeline_stage_tasks = Bool(data_key="PIPELINE_STAGE_TASKS", load_default=False)
    outbox_relay_after_secs = Int(data_key="OUTBOX_RELAY_AFTER_SECS", validate=validate.Range(min=1), load_default=30)
    task_max_retries = Int(data_key="TASK_MAX_RETRIES", validate=validate.Range(min=0, max=100), load_default=5)
    prometheus_url = fields.String(data_key="PROMETHEUS_URL", load_default=None)


def load_runtime(tree: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Settings keyword arguments; `instance_id` is the reference README's top-level key, INSTANCE_ID wins."""
    runtime: dict[str, Any] = load(_RuntimeEnvSchema(), env)
    instance_id = runtime["instance_id"] or tree.get("instance_id") or "standalone-001"
    if not isinstance(instance_id, str):
        raise ConfigError(f"instance_id: expected a string, got {instance_id!r}")
    runtime["instance_id"] = instance_id
    return runtime
