"""Prometheus metrics, named as in the reference README. Under gunicorn and Celery prefork the
processes share PROMETHEUS_MULTIPROC_DIR, so the web's /metrics shows what workers counted."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

ALERTS_PROCESSED = Counter("incident_manager_alerts_processed_total", "Events that finished the pipeline")
INCIDENTS_CREATED = Counter("incident_manager_incidents_created_total", "Incidents opened")
INCIDENTS_RESOLVED = Counter("incident_manager_incidents_resolved_total", "Incidents resolved")
EVENTS_INGESTED = Counter(
    "incident_manager_events_ingested_total", "Events answered by ingest", ["door", "status"]
)
EVENTS_REJECTED = Counter(
    "incident_manager_requests_rejected_total", "Requests refused before ingest", ["code"]
)
INGEST_DURATION = Histogram(
    "incident_manager_ingest_duration_seconds", "Durable ingest transaction time", ["door"], buckets=LATENCY_BUCKETS
)
INGEST_GROUP_SIZE = Histogram(
    "incident_manager_ingest_group_size", "Events per group commit of single-event requests", ["door"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
DB_CONNECTION_WAIT = Histogram(
    "incident_manager_db_connection_wait_seconds",
    "Time a statement waited for a free connection slot (observed only when it had to wait)", ["pool"],
    buckets=LATENCY_BUCKETS,
)
DB_RETRIES = Counter(
    "incident_manager_db_retries_total",
    "Transactions re-run after losing a deadlock (40P01) or serialization race (40001)", ["operation", "sqlstate"],
)
DB_UNAVAILABLE = Counter(
    "incident_manager_db_unavailable_total", "Operations refused because Postgres was unreachable", ["operation"],
)
HTTP_REQUESTS = Counter(
    "incident_manager_http_requests_total", "HTTP requests", ["method", "endpoint", "status"]
)
HTTP_DURATION = Histogram(
    "incident_manager_http_request_duration_seconds", "HTTP request latency", ["method", "endpoint"],
    buckets=LATENCY_BUCKETS,
)
TASK_DURATION = Histogram(
    "incident_manager_task_duration_seconds", "Celery task run time", ["task"], buckets=LATENCY_BUCKETS
)
PROCESSING_DURATION = Histogram(
    "incident_manager_processing_duration_seconds", "Pipeline batch processing time", ["stage"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "incident_manager_queue_depth", "Messages waiting per Celery queue", ["queue"],
    multiprocess_mode="livemostrecent",  # the latest reading wins: the web's scrape or beat's task
)
QUEUE_OLDEST_AGE = Gauge(
    "incident_manager_queue_oldest_age_seconds", "Age of the oldest unprocessed work per queue", ["queue"],
    multiprocess_mode="livemostrecent",
)
OUTBOX_RELAYED = Counter("incident_manager_outbox_relayed_total", "Outbox messages re-sent by the relay")
DEAD_LETTERS = Counter("incident_manager_dead_letters_total", "Tasks that ran out of retries", ["task"])
OUTBOUND_REQUESTS = Counter(
    "incident_manager_outbound_requests_total", "Outbound HTTP requests by target and outcome", ["target", "outcome"]
)
OUTBOUND_DURATION = Histogram(
    "incident_manager_outbound_request_duration_seconds", "Outbound HTTP request time", ["target"],
    buckets=LATENCY_BUCKETS,
)
OUTBOUND_BLOCKED = Counter(
    "incident_manager_outbound_blocked_total", "Outbound connections refused by the SSRF guard"
)
NOTIFICATION_LANE = Gauge(
    "incident_manager_notification_lane_depth", "Delivery records sending or waiting in a target's lane (this process)",
    ["target"], multiprocess_mode="livesum",
)
NOTIFICATION_RELEASED = Counter(
    "incident_manager_notification_claims_released_total",
    "Claimed delivery records handed back unsent (their lane was full or their lease would run out)",
)
JIRA_SYNC = Counter("incident_manager_jira_sync_runs_total", "JIRA status sync polls by outcome", ["outcome"])
NOTIFICATIONS_SENT = Counter(
    "incident_manager_notifications_sent_total", "Notifications by channel and outcome", ["channel", "outcome"]
)
SLACK_ACTIONS = Counter(
    "incident_manager_slack_actions_total", "Slack interactivity requests by outcome", ["outcome"]
)
RATE_LIMITED = Counter("incident_manager_rate_limited_total", "Requests refused with 429", ["key"])
ESCALATIONS_TRIGGERED = Counter(
    "incident_manager_escalations_triggered_total", "Escalation levels paged", ["level"]
)
ESCALATION_SWEEP_DURATION = Histogram(
    "incident_manager_escalation_sweep_duration_seconds", "Time of one escalation sweep", buckets=LATENCY_BUCKETS
)
ESCALATION_DUE = Gauge(
    "incident_manager_escalation_due", "Incidents due for their next escalation level after the last sweep",
    multiprocess_mode="livemax",
)
SLA_BREACHES = Counter(
    "incident_manager_sla_breaches_total", "SLA deadlines crossed", ["target", "severity"]
)
ANALYTICS_ROLLUP_DAYS = Counter(
    "incident_manager_analytics_rollup_days_total", "Days (re)computed into the analytics rollup"
)
ANALYTICS_ROLLUP_DURATION = Histogram(
    "incident_manager_analytics_rollup_duration_seconds", "Time of one analytics rollup run that computed days",
    buckets=LATENCY_BUCKETS,
)
ANALYTICS_DIRTY_DAYS = Gauge(
    "incident_manager_analytics_dirty_days", "Rolled-up days whose incidents changed and wait to be rolled up again",
    multiprocess_mode="livemax",
)


# Collectors that read shared state when /metrics is scraped (e.g. circuit breakers, whose state lives
# in Redis rather than in any one process); their exposition is appended to the processes' metrics.
_scrape_registry = CollectorRegistry(auto_describe=False)


def register_scrape_collector(collector: Any) -> None:
    _scrape_registry.register(collector)


_http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_http(method: str, endpoint: str, status: int, seconds: float) -> None:
    """Count and time one HTTP request. The labelled children are looked up once per
    (method, endpoint, status) rather than per request (`labels()` validates and locks each time)."""
    key = (method, endpoint, status)
    children = _http_children.get(key)
    if children is None:
        children = (HTTP_REQUESTS.labels(method, endpoint, str(status)), HTTP_DURATION.labels(method, endpoint))
        _http_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


def render() -> tuple[bytes, str]:
    """The exposition for /metrics: the multiprocess aggregate when a shared directory is set."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and os.path.isdir(directory):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry) + generate_latest(_scrape_registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY) + generate_latest(_scrape_registry), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
