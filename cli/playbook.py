"""`incident-manager playbook list|run|show|approve|cancel`: playbooks and their runs (the same
services as `/api/v1/playbooks` and `/api/v1/playbook-runs`). `run` prints each step as it moves
until the run finishes. docs/playbooks.md."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from cli.common import settings_or_exit

TRIGGER_ORDER = ("severity", "category", "event_type", "source", "tags")


@click.group("playbook")
def playbook_group() -> None:
    """Playbooks: list them, run one on an incident, approve or cancel a run."""


def _service() -> Any:
    settings_or_exit()
    from app.services import playbooks

    return playbooks


def _fail(message: str, code: int = 1) -> None:
    click.echo(message, err=True)
    sys.exit(code)


@playbook_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
def list_playbooks(as_json: bool) -> None:
    """Stored playbooks and the auto-remediation ones config.yaml declares."""
    playbooks = _service().list_playbooks()
    if as_json:
        click.echo(json.dumps(playbooks, default=str))
        return
    for p in playbooks:
        given = p.get("triggers") or {}
        triggers = ", ".join(f"{k}={given[k]}" for k in TRIGGER_ORDER if given.get(k)) or "manual only"
        steps = " -> ".join(f"{s['name']}({s['type']}{', destructive' if s.get('destructive') else ''})"
                            for s in p["steps"])
        state = "" if p.get("enabled", True) else " [disabled]"
        click.echo(f"{p['name']}{state}  [{p.get('origin', 'api')}]  when {triggers}: {steps}")


def _step_line(step: dict[str, Any]) -> str:
    extra = f"  {step['error']}" if step.get("error") and step["status"] in ("failed", "pending") else ""
    tries = f" (attempt {step['attempts']})" if step["attempts"] > 1 else ""
    return f"  step {step['position'] + 1} {step['name']} [{step['type']}]: {step['status']}{tries}{extra}"


def _follow(service: Any, run: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Print every change of a step's status until the run finishes (or `timeout` passes)."""
    seen: dict[int, tuple[str, int]] = {}
    status = None
    deadline = time.monotonic() + timeout
    while True:
        for step in run["steps"]:
            key = (step["status"], step["attempts"])
            if seen.get(step["position"]) != key and not (step["status"] == "pending" and step["attempts"] == 0):
                seen[step["position"]] = key
                click.echo(_step_line(step))
        if run["status"] != status:
            status = run["status"]
            if status == "awaiting_approval":
                click.echo(f"run {run['id']} waits for approval: incident-manager playbook approve {run['id']} "
                           f"(or POST /api/v1/playbook-runs/{run['id']}/approve)")
        if run["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return run
        time.sleep(0.3)
        run = service.get_run(run["id"])


@playbook_group.command("run")
@click.argument("name")
@click.argument("incident_id")
@click.option("--actor", default="cli", show_default=True, help="Who runs it (timeline and run record).")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to follow the run before returning.")
@click.option("--no-wait", is_flag=True, help="Start the run and print its id without following it.")
def run_playbook(name: str, incident_id: str, actor: str, timeout: float, no_wait: bool) -> None:
    """Run playbook NAME on incident INCIDENT_ID; prints each step until the run finishes.
    Exit status: 0 succeeded, 1 failed or cancelled, 3 still running when --timeout passed."""
    service = _service()
    from app.domain.incident import IncidentNotFound
    from app.services import escalation_config as config
    from tasks.queue import celery_task_queue

    try:
        run = service.start_run(incident_id, name, actor, celery_task_queue())
    except (IncidentNotFound, config.NotFound, service.PlaybookUnavailable) as exc:
        _fail(str(exc))
    click.echo(f"run {run['id']}: playbook {name} on {run['incident_id']} ({len(run['steps'])} steps)")
    if no_wait:
        return
    run = _follow(service, run, timeout)
    click.echo(f"run {run['id']}: {run['status']}" + (f" ({run['error']})" if run.get("error") else ""))
    sys.exit({"succeeded": 0, "failed": 1, "cancelled": 1}.get(run["status"], 3))


@playbook_group.command("show")
@click.argument("run_id", type=int)
def show_run(run_id: int) -> None:
    """A run with its steps, as JSON."""
    service = _service()
    try:
        click.echo(json.dumps(service.get_run(run_id), indent=2, default=str))
    except service.RunNotFound as exc:
        _fail(str(exc))


def _act(action: str, run_id: int, actor: str) -> None:
    service = _service()
    from tasks.queue import celery_task_queue

    try:
        run = service.approve(run_id, actor, celery_task_queue()) if action == "approve" else service.cancel(run_id,
                                                                                                            actor)
    except (service.RunNotFound, service.RunConflict) as exc:
        _fail(str(exc))
    click.echo(f"run {run['id']}: {run['status']}")


@playbook_group.command("approve")
@click.argument("run_id", type=int)
@click.option("--actor", default="cli", show_default=True)
def approve_run(run_id: int, actor: str) -> None:
    """Approve the destructive step run RUN_ID waits at."""
    _act("approve", run_id, actor)


@playbook_group.command("cancel")
@click.argument("run_id", type=int)
@click.option("--actor", default="cli", show_default=True)
def cancel_run(run_id: int, actor: str) -> None:
    """Cancel run RUN_ID."""
    _act("cancel", run_id, actor)
