"""What each playbook step type does, given its loaded `params` and the run's context. No shell:
HTTP through the SSRF-guarded client, the integrations' remediation endpoints, the notification
channels, the incident use cases, JIRA, and allow-listed Celery tasks through the TaskQueue.

A step either returns its output (a small JSON-safe dict kept on the step record) or raises
StepFailed, saying whether another attempt could succeed. docs/playbooks.md, "Step types"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import orjson
from sqlalchemy import select

from app.adapters import http_client
from app.adapters.channels import jira
from app.adapters.db import read_session
from app.adapters.escalation_models import User
from app.adapters.http_client import DeliveryError
from app.config import get_settings
from app.config.outbound import get_outbound_settings
from app.config.remediation import remediation_for
from app.domain.incident import IllegalTransition
from app.services import incidents
from app.services.task_queue import TaskQueue
from app.services.templates import PayloadTemplate, TemplateError

MAX_KEPT_BODY = 2000  # characters of a response body kept in a step's output


class StepFailed(Exception):
    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class StepCall:
    """One attempt of one step: who runs it, for which incident, with what."""

    run_id: int
    position: int
    playbook: str
    step_name: str
    type: str
    params: Mapping[str, Any]
    timeout_secs: float
    context: Mapping[str, Any]  # {incident, event, run, steps}: what templates see
    queue: TaskQueue | None

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt of the step: a receiver can drop a repeat after a crash."""
        return f"playbook-run-{self.run_id}-step-{self.position}"

    @property
    def actor(self) -> str:
        return f"playbook:{self.playbook}"

    @property
    def incident(self) -> Mapping[str, Any]:
        return self.context["incident"]


def _render(call: StepCall, source: str, what: str, as_json: bool = False) -> str:
    try:
        return PayloadTemplate(f"{call.step_name}.{what}", source).render(call.context, as_json=as_json)
    except TemplateError as exc:
        raise StepFailed(str(exc), retryable=False) from None


def _failed(exc: DeliveryError) -> StepFailed:
    return StepFailed(str(exc), retryable=exc.retryable)


def _body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return raw[:MAX_KEPT_BODY].decode("utf-8", "replace")


def http_request(call: StepCall) -> dict[str, Any]:
    params = call.params
    url = _render(call, params["url"], "url").strip()
    if not url.startswith(("http://", "https://")):
        raise StepFailed(f"the rendered url is not http(s): {url[:200]!r}", retryable=False)
    headers = {name: _render(call, value, f"headers.{name}") for name, value in (params.get("headers") or {}).items()}
    lowered = {k.lower() for k in headers}
    content: bytes | None = None
    if params.get("body") is not None:
        json_body = "content-type" not in lowered or "json" in headers.get(
            next(k for k in headers if k.lower() == "content-type"), "")
        content = _render(call, params["body"], "body", as_json=json_body).encode()
        if "content-type" not in lowered:
            headers["Content-Type"] = "application/json"
    headers.setdefault("Idempotency-Key", call.idempotency_key)
    try:
        answer = http_client.send("playbooks", params.get("method", "POST"), url, content=content, headers=headers,
                                  timeout_secs=call.timeout_secs, max_attempts=1)
    except DeliveryError as exc:
        raise _failed(exc) from None
    return {"status": answer.status, "body": _body(answer.body[:MAX_KEPT_BODY * 4])}


def _tags(call: StepCall) -> Mapping[str, Any]:
    return call.incident.get("tags") or {}


def _user(call: StepCall) -> str:
    if call.params.get("user"):
        user = _render(call, call.params["user"], "user").strip()
    else:
        user = str(_tags(call).get("user_id") or _tags(call).get("user") or "")
    if not user:
        raise StepFailed("no user to act on: the event's tags carry no user_id and the step names none (params.user)",
                         retryable=False)
    return user


def _tenant(call: StepCall, required: bool) -> str | None:
    if call.params.get("tenant"):
        tenant = _render(call, call.params["tenant"], "tenant").strip()
    else:
        resource = call.incident.get("resource") or {}
        tenant = str(_tags(call).get("tenant_id") or _tags(call).get("tenant")
                     or (resource.get("id") if resource.get("type") == "tenant" else "") or "")
    if not tenant and required:
        raise StepFailed("no tenant to act on: the event carries no tenant_id tag or tenant resource and the step "
                         "names none (params.tenant)", retryable=False)
    return tenant or None


def remediate(call: StepCall) -> dict[str, Any]:
    """`block_user` / `rate_limit`: POST `<endpoint>/<action>` of the integration's remediation API
    (the incident's source unless the step names another)."""
    action = call.type
    integration = call.params.get("integration") or str(call.incident.get("source") or "")
    settings = remediation_for(get_settings().remediation, integration)
    if not settings.endpoint:
        from app.config.remediation import env_prefix

        raise StepFailed(f"no remediation endpoint for {integration}: set integrations.{integration}."
                         f"auto_remediation.endpoint or {env_prefix(integration)}_REMEDIATION_URL", retryable=False)
    tags = _tags(call)
    request: dict[str, Any] = {
        "action": action,
        "user_id": _user(call) if action == "block_user" else (str(tags["user_id"]) if tags.get("user_id") else None),
        "tenant_id": _tenant(call, required=action == "rate_limit"),
        "incident_id": call.incident.get("id"),
        "event_id": (call.context.get("event") or {}).get("event_id"),
        "source": call.incident.get("source"),
        "severity": call.incident.get("severity"),
        "reason": _render(call, call.params["reason"], "reason") if call.params.get("reason")
        else call.incident.get("title"),
        "duration_secs": call.params.get("duration_secs"),
        "playbook": call.playbook,
        "run_id": call.run_id,
    }
    if action == "rate_limit":
        request["limit_rpm"] = call.params.get("limit_rpm")
    headers = {"Content-Type": "application/json", "Idempotency-Key": call.idempotency_key}
    if settings.api_key:
        headers["X-API-Key"] = settings.api_key
    try:
        answer = http_client.send(settings.breaker, "POST", f"{settings.endpoint}/{action}",
                                  content=orjson.dumps(request), headers=headers,
                                  timeout_secs=min(call.timeout_secs, settings.timeout_secs), max_attempts=1)
    except DeliveryError as exc:
        raise _failed(exc) from None
    return {"integration": integration, "request": request, "status": answer.status,
            "response": _body(answer.body[:MAX_KEPT_BODY * 4])}


def notify(call: StepCall) -> dict[str, Any]:
    from app.services.notifications import send_now

    contact: dict[str, Any] = {}
    if call.params.get("user"):
        with read_session() as session:
            user = session.scalars(select(User).where(User.name == call.params["user"])).first()
        if user is None:
            raise StepFailed(f"no user named {call.params['user']!r}", retryable=False)
        contact = dict(user.contact or {})
        if user.email:
            contact.setdefault("email", user.email)
    if call.params.get("webhook"):
        contact["webhook"] = call.params["webhook"]
    try:
        sent = send_now(call.params["channel"], dict(call.incident), contact, call.idempotency_key)
    except DeliveryError as exc:
        raise _failed(exc) from None
    return {"channel": sent.channel, "target": sent.target, "status": sent.status_code,
            "reference": dict(sent.reference)}


def wait(call: StepCall) -> dict[str, Any]:
    return {"seconds": call.params["seconds"]}  # the run resumes that much later (playbooks.record)


def set_status(call: StepCall) -> dict[str, Any]:
    target = call.params["status"]
    changes: dict[str, Any] = {"status": target}
    if call.params.get("notes"):
        changes["resolution_notes"] = call.params["notes"]
    try:
        incident = incidents.update_incident(str(call.incident["id"]), call.actor, changes)
    except IllegalTransition as exc:
        if exc.current == target:  # already there (a repeated attempt after a crash): the goal holds
            return {"status": target, "changed": False}
        raise StepFailed(str(exc), retryable=False) from None
    return {"status": incident["status"], "changed": True}


def assign(call: StepCall) -> dict[str, Any]:
    fields = {k: call.params[k] for k in ("assignee", "team") if call.params.get(k)}
    incident = incidents.patch(str(call.incident["id"]), call.actor, fields)
    return {k: incident.get(k) for k in fields}


def create_jira_issue(call: StepCall) -> dict[str, Any]:
    outbound = get_outbound_settings()
    if not outbound.jira.enabled:
        raise StepFailed("JIRA is not configured (integrations.jira in config.yaml)", retryable=False)
    try:
        sent = jira.create_issue(call.incident, outbound)
    except DeliveryError as exc:
        raise _failed(exc) from None
    return {"status": sent.status_code, "project": sent.target, "issue": dict(sent.reference)}


def run_task(call: StepCall) -> dict[str, Any]:
    task = call.params["task"]
    if task not in get_settings().playbook_tasks:  # the list may have changed since the playbook was saved
        raise StepFailed(f"{task!r} is not an allowed task (PLAYBOOK_ALLOWED_TASKS)", retryable=False)
    if call.queue is None:
        raise StepFailed("no task queue in this process", retryable=True)
    call.queue.send(task, list(call.params.get("args") or []), dict(call.params.get("kwargs") or {}))
    return {"task": task, "enqueued": True}


EXECUTORS: dict[str, Callable[[StepCall], dict[str, Any]]] = {
    "http_request": http_request, "block_user": remediate, "rate_limit": remediate, "notify": notify, "wait": wait,
    "set_status": set_status, "assign": assign, "create_jira_issue": create_jira_issue, "run_task": run_task,
}


def execute(call: StepCall) -> dict[str, Any]:
    """Run one attempt of a step; StepFailed when it did not succeed."""
    return EXECUTORS[call.type](call)
