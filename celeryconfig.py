"""Celery configuration: explicit queues and routes, at-least-once delivery, JSON only.

The broker comes from the settings (CELERY_BROKER_URL, else REDIS_URL, else the server-less
filesystem transport of the embedded default)."""

from __future__ import annotations

import os

import kombu.transport
from kombu import Exchange, Queue

from app.config import get_settings
from tasks.queues import QUEUES

_settings = get_settings()

# `filesystem://` is kombu's filesystem transport whose messages are renamed into place only once
# written in full (tasks/embedded_broker.py). Registered under the URL's own scheme, not as
# `broker_transport`: that setting would outlive a CELERY_BROKER_URL given later (Celery reads that
# variable at every connection) and send a redis:// URL through the filesystem transport.
kombu.transport.TRANSPORT_ALIASES["filesystem"] = "tasks.embedded_broker:AtomicFilesystemTransport"
kombu.transport._transport_cache.pop("filesystem", None)  # resolved before this module ran

broker_url = _settings.broker_url
if broker_url.startswith("filesystem://"):
    # kombu warns "No hostname was supplied" at every connection (20 lines at start) without one;
    # the filesystem transport ignores it.
    broker_url = "filesystem://localhost//"
    _folder = str(_settings.data_dir / "broker")
    # kombu's filesystem transport does not create its folders; a worker or web started on its
    # own (not through `incident-manager run`) would otherwise fail to send or receive.
    os.makedirs(_folder, exist_ok=True)
    os.makedirs(_settings.data_dir / "broker-control", exist_ok=True)
    broker_transport_options = {
        "data_folder_in": _folder,
        "data_folder_out": _folder,
        "control_folder": str(_settings.data_dir / "broker-control"),
        "store_processed": False,
        # A consumer finding every queue empty sleeps this long before it looks again (kombu's
        # default is 1 s, a second per pipeline stage); docs/operations.md has the measurements.
        "polling_interval": float(os.environ.get("FILESYSTEM_BROKER_POLL_SECS", "0.05")),
    }
    worker_consumer = "tasks.embedded_broker:QuickStopConsumer"  # stops in < 0.5 s, not 4-7 s

else:
    broker_transport_options = {
        # Redis: a message a worker took and never acked is redelivered after this long.
        "visibility_timeout": 600,
        "queue_order_strategy": "priority",
    }
broker_connection_retry_on_startup = True

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
event_serializer = "json"
task_ignore_result = True
result_backend = None

# At-least-once: ack after the task ran; a killed worker's task goes back to the queue.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_time_limit = 300
task_soft_time_limit = 240
worker_max_tasks_per_child = 10_000
worker_send_task_events = True  # Flower
task_send_sent_event = True
timezone = "UTC"
enable_utc = True

task_default_queue = "pipeline"
task_queues = [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES]
# Every task is routed here by name (tests/unit/test_task_routes.py: each registered task matches
# a route, each route matches a task); a task module's tasks share its queue's prefix.
task_routes = {
    # The drain at the lowest priority: while the pipeline is busy, ids pile up in Redis and the next
    # drain takes them as one bigger batch (backpressure makes batches grow with load).
    "pipeline.drain": {"queue": "pipeline", "routing_key": "pipeline", "priority": 9},
    "pipeline.*": {"queue": "pipeline", "routing_key": "pipeline"},
    "ingest.*": {"queue": "ingest", "routing_key": "ingest"},
    "notifications.*": {"queue": "notifications", "routing_key": "notifications"},
    "escalation.*": {"queue": "escalation", "routing_key": "escalation"},
    "sla.*": {"queue": "escalation", "routing_key": "escalation"},
    "analytics.*": {"queue": "escalation", "routing_key": "escalation"},
    "ml.*": {"queue": "ml", "routing_key": "ml"},
    "playbooks.advance": {"queue": "playbooks", "routing_key": "playbooks"},
    "playbooks.sweep": {"queue": "playbooks", "routing_key": "playbooks"},
    "ops.*": {"queue": "ingest", "routing_key": "ingest"},
}

_ESCALATION_SWEEP_SECS = float(os.environ.get("ESCALATION_SWEEP_SECS", "5"))
_SLA_CHECK_SECS = float(os.environ.get("SLA_CHECK_SECS", "15"))
_ANALYTICS_ROLLUP_SECS = float(os.environ.get("ANALYTICS_ROLLUP_SECS", "60"))
_NOTIFICATIONS_DISPATCH_SECS = float(os.environ.get("NOTIFICATIONS_DISPATCH_SECS", "2"))
_GOVERNANCE_PUSH_SECS = float(os.environ.get("GOVERNANCE_PUSH_SECS", "5"))
_PLAYBOOK_SWEEP_SECS = float(os.environ.get("PLAYBOOK_SWEEP_SECS", "2"))

beat_schedule = {
    # Retrain when enough feedback arrived (ml.training_batch_size); the check itself is one COUNT.
    "ml-retrain-check": {"task": "ml.check_retrain", "schedule": float(os.environ.get("ML_RETRAIN_CHECK_SECS", "60"))},
    "outbox-relay": {"task": "ingest.relay_outbox", "schedule": 10.0},
    "queue-metrics": {"task": "ops.record_queue_depths", "schedule": 15.0},
    "beat-heartbeat": {"task": "ingest.beat_heartbeat", "schedule": 10.0},
    # Escalation and SLA times are columns; beat sweeps them (docs/escalation.md). No ETA tasks.
    # A run still queued when the next is due is dropped (`expires`): the next one does its work.
    "escalation-sweep": {"task": "escalation.sweep", "schedule": _ESCALATION_SWEEP_SECS,
                         "options": {"expires": max(_ESCALATION_SWEEP_SECS, 1.0)}},
    "sla-check": {"task": "sla.check", "schedule": _SLA_CHECK_SECS, "options": {"expires": max(_SLA_CHECK_SECS, 1.0)}},
    # Closed days into the analytics rollup, and days changed since (docs/escalation.md "Analytics").
    "analytics-rollup": {"task": "analytics.rollup", "schedule": _ANALYTICS_ROLLUP_SECS,
                         "options": {"expires": max(_ANALYTICS_ROLLUP_SECS, 1.0)}},
    # Delivery records due to be sent (new, or a retry, or a lease a dead worker left); docs/notifications.md.
    "notifications-dispatch": {"task": "notifications.dispatch", "schedule": _NOTIFICATIONS_DISPATCH_SECS,
                               "options": {"expires": max(_NOTIFICATIONS_DISPATCH_SECS, 1.0)}},
    # JIRA status back into incidents: a poll when integrations.jira.sync's interval passed.
    "jira-sync": {"task": "notifications.jira_sync", "schedule": float(os.environ.get("JIRA_SYNC_CHECK_SECS", "30")),
                  "options": {"expires": 30.0}},
    # Governance audit push: sends what is due (a full batch or max_wait_ms old); docs/notifications.md.
    "governance-audit-push": {"task": "notifications.governance_push", "schedule": _GOVERNANCE_PUSH_SECS,
                              "options": {"expires": max(_GOVERNANCE_PUSH_SECS, 1.0)}},
    # Playbook runs whose message was lost, whose worker died mid-step, or whose wait is over
    # (docs/playbooks.md, "Execution").
    "playbooks-sweep": {"task": "playbooks.sweep", "schedule": _PLAYBOOK_SWEEP_SECS,
                        "options": {"expires": max(_PLAYBOOK_SWEEP_SECS, 1.0)}},
}
