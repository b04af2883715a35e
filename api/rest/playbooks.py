"""Playbook runs over REST: run a playbook on an incident by hand, read a run with its steps,
approve the destructive step a run waits at, cancel a run. The playbooks themselves are a
collection of api/rest/escalation.py (`/api/v1/playbooks`, CRUD by name). docs/playbooks.md."""

from __future__ import annotations

from typing import Any, Callable

from flask import Blueprint, jsonify

from api.auth import current_principal, require
from api.errors import ApiError
from api.openapi import doc
from app.services import escalation_config as config
from app.services import playbooks
from tasks.queue import celery_task_queue

bp = Blueprint("playbooks", __name__)


def _call(fn: Callable[[], Any], status: int = 200) -> Any:
    """Map the playbook service's errors to 404 / 409."""
    try:
        response = jsonify(fn())
    except (config.NotFound, playbooks.RunNotFound) as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except playbooks.RunConflict as exc:
        raise ApiError(409, "conflict", str(exc), {"status": exc.status}) from None
    except playbooks.PlaybookUnavailable as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    response.status_code = status
    return response


@bp.post("/api/v1/incidents/<incident_id>/playbooks/<playbook>/run")
@require("incident:write")
@doc("Run a playbook on the incident now; the run's steps execute on the `playbooks` queue",
     responses={202: "The run (status queued)", 404: "Unknown incident or playbook", 409: "The playbook is disabled"})
def run_playbook(incident_id: str, playbook: str) -> Any:
    actor = current_principal().name
    return _call(lambda: playbooks.start_run(incident_id, playbook, actor, celery_task_queue()), 202)


@bp.get("/api/v1/incidents/<incident_id>/playbook-runs")
@require("incident:read")
@doc("The incident's playbook runs, oldest first, each with its steps", responses={200: "{items}", 404: ""})
def incident_runs(incident_id: str) -> Any:
    return _call(lambda: {"items": playbooks.runs_of_incident(incident_id), "next_cursor": None})


@bp.get("/api/v1/playbook-runs/<int:run_id>")
@require("incident:read")
@doc("A playbook run with its steps: status, attempts, output, error, timings, approval",
     responses={200: "The run", 404: ""})
def get_run(run_id: int) -> Any:
    return _call(lambda: playbooks.get_run(run_id))


@bp.post("/api/v1/playbook-runs/<int:run_id>/approve")
@require("incident:write")
@doc("Approve the destructive step the run waits at; the run goes on",
     responses={200: "The run", 404: "", 409: "The run is not awaiting approval"})
def approve(run_id: int) -> Any:
    actor = current_principal().name
    return _call(lambda: playbooks.approve(run_id, actor, celery_task_queue()))


@bp.post("/api/v1/playbook-runs/<int:run_id>/cancel")
@require("incident:write")
@doc("Cancel a run: steps not started are cancelled; a running step finishes and nothing follows it",
     responses={200: "The run", 404: "", 409: "The run already finished"})
def cancel(run_id: int) -> Any:
    actor = current_principal().name
    return _call(lambda: playbooks.cancel(run_id, actor))
