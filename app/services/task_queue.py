"""The task queue as the services see it: send a task by name, look at the broker and the workers.

`app/` knows no Celery: the implementation (`tasks.queue.CeleryTaskQueue`) is passed in by the
entrypoints (the web's health views, the CLI, the workers' own tasks)."""

from __future__ import annotations

from typing import Any, Protocol, TypedDict


class QueueStats(TypedDict):
    depth: int  # messages waiting (not those a worker holds)
    oldest_age_seconds: float | None  # age of the oldest waiting message; None when empty or unknown


class TaskQueue(Protocol):
    def send(self, task_name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        """Queue one call of `task_name` on the queue its route names."""

    def broker_status(self) -> dict[str, Any]:
        """`{"status": "up"|"down", "transport": ..., ...}` for /health."""

    def ping_workers(self, timeout: float) -> list[str]:
        """Names of the workers that answered a ping within `timeout` seconds."""

    def queue_stats(self) -> dict[str, QueueStats]:
        """Depth and oldest waiting message of every queue the workers consume."""
