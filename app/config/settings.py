"""The Settings object every caller reads: one flat, frozen view over the sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from app.config.features import (
    CorrelationSettings,
    DeduplicationSettings,
    EnrichmentSettings,
    EscalationSettings,
    MLSettings,
    RateLimitSettings,
)
from app.config.graphql import GraphQLSettings
from app.config.integrations import IntegrationSettings, RoutingRule, default_integration
from app.config.outbound import OutboundSettings
from app.config.remediation import DEFAULT_PLAYBOOK_TASKS, RemediationSettings
from app.domain.sla import SlaTargets


@dataclass(frozen=True)
class Settings:
    # runtime.py
    instance_id: str
    log_level: str
    worker_metrics_port: int | None
    metrics_require_key: bool
    health_cache_secs: float
    pipeline_batch_size: int
    pipeline_stage_tasks: bool
    outbox_relay_after_secs: int
    task_max_retries: int
    prometheus_url: str | None
    # storage.py
    data_dir: Path
    database_url: str
    database_pool_size: int
    redis_url: str | None
    broker_url: str
    # doors.py
    api_host: str
    api_port: int
    grpc_host: str
    grpc_port: int
    public_base_url: str | None
    max_body_bytes: int
    max_batch_events: int
    grpc_tls_cert: str | None
    grpc_tls_key: str | None
    grpc_client_ca: str | None
    grpc_allowed_identities: tuple[str, ...]
    grpc_max_workers: int
    ws_max_message_bytes: int
    ws_idle_timeout_secs: int
    # security.py
    api_key_secret: bytes = field(repr=False)  # never in a log line or a traceback
    jwt_secret: str = field(repr=False)
    jwks_url: str | None
    jwt_algorithms: tuple[str, ...]
    flower_basic_auth: tuple[str, ...] | None = field(repr=False)  # Flower's user:password pairs
    # features.py
    enable_ml_classification: bool
    enable_enrichment: bool
    enable_correlation: bool
    enable_escalation: bool
    rate_limit: RateLimitSettings
    ml: MLSettings
    enrichment: EnrichmentSettings
    correlation: CorrelationSettings
    escalation: EscalationSettings
    deduplication: DeduplicationSettings
    sla: SlaTargets
    # integrations.py
    integrations: Mapping[str, IntegrationSettings]
    routing_rules: tuple[RoutingRule, ...] = ()
    # graphql.py
    graphql: GraphQLSettings = field(default_factory=GraphQLSettings)
    # The config.yaml document as read (sections such as `notifications` are read by their owners).
    raw: Mapping[str, Any] = field(default_factory=dict)
    # outbound.py: `notifications`, `circuit_breakers`, `integrations.jira|webhooks|llm-governance-core`
    outbound: OutboundSettings | None = field(default=None, repr=False)
    # remediation.py: `integrations.<name>.auto_remediation` and `<NAME>_REMEDIATION_URL`
    remediation: Mapping[str, RemediationSettings] = field(default_factory=dict, repr=False)
    playbook_tasks: tuple[str, ...] = DEFAULT_PLAYBOOK_TASKS  # what a `run_task` step may enqueue

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
        return found or default_integration(source)
