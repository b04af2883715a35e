"""The `playbooks` queue: one step of a run per `playbooks.advance` task, and beat's sweep of runs
whose message was lost or whose worker died. Thin: the work is in `app.services.playbooks`."""

from __future__ import annotations

from typing import Any

from app.services import playbooks
from tasks.celery_app import app
from tasks.queue import celery_task_queue

# The route stage (no queue argument) sends the runs it starts through this process's queue.
playbooks.use_task_queue(celery_task_queue())


@app.task(name="playbooks.advance")
def advance(run_id: int) -> dict[str, Any]:
    """Run the next step of a playbook run, then send the run again for the one after it."""
    return playbooks.advance(int(run_id), celery_task_queue())


@app.task(name="playbooks.sweep")
def sweep() -> int:
    """Beat: send again the open runs whose next check is due (lost message, dead worker, wait over)."""
    return playbooks.sweep(celery_task_queue())
