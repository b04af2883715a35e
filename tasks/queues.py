"""The Celery queues, by name: the one list `celeryconfig` declares and routes to, the Procfile's
worker consumes (`-Q`), and the test harness's workers consume (tests/unit/test_task_routes.py
holds them together). No imports: the harness reads it before any settings exist."""

from __future__ import annotations

QUEUES: tuple[str, ...] = ("ingest", "pipeline", "notifications", "escalation", "playbooks", "ml")
