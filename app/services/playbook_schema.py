"""The playbook document: triggers and ordered steps, one schema that REST (`/api/v1/playbooks`) and
the YAML import (`playbooks:` of `incident-manager config import`) both load through. Each step
type's `params` are checked by that type's schema, so a bad definition answers 422 naming the
field (`steps.0.params.url`). Templates are compiled here (syntax, no `_` internals). docs/playbooks.md."""

from __future__ import annotations

from typing import Any, Mapping

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates, validates_schema

from app.config.schema import SingleValues
from app.domain.incident import STATUS_NAMES
from app.domain.playbook import ON_FAILURE, STEP_TYPES
from app.domain.severity import SEVERITIES
from app.services.templates import TemplateError, compile_template

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@+\-]{0,199}$"
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
NOTIFY_CHANNELS = ("email", "slack", "pagerduty", "webhook")


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class Template(fields.String):
    """A string rendered by the sandboxed template engine when the step runs; compiled on load."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            compile_template(text, attr or "template")
        except TemplateError as exc:
            raise ValidationError(str(exc)) from None
        return text


class _HttpRequest(_Strict):
    url = Template(required=True, validate=validate.Length(min=1, max=2000))
    method = fields.String(load_default="POST", validate=validate.OneOf(HTTP_METHODS))
    headers = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=200)), values=Template(),
                          load_default=dict)
    body = Template(load_default=None, allow_none=True, validate=validate.Length(max=100_000))

    @validates("url")
    def _scheme(self, value: str, **_: Any) -> None:
        if not value.lstrip().startswith(("http://", "https://", "{{")):
            raise ValidationError("expected an http:// or https:// URL (templated: {{ ... }})")


class _BlockUser(_Strict):
    integration = fields.String(load_default=None, validate=validate.Length(min=1, max=100))
    user = Template(load_default=None, validate=validate.Length(min=1, max=500))
    duration_secs = fields.Integer(load_default=None, validate=validate.Range(min=1, max=366 * 86_400))
    reason = Template(load_default=None, validate=validate.Length(max=2000))


class _RateLimit(_Strict):
    integration = fields.String(load_default=None, validate=validate.Length(min=1, max=100))
    tenant = Template(load_default=None, validate=validate.Length(min=1, max=500))
    limit_rpm = fields.Integer(load_default=None, validate=validate.Range(min=0))
    duration_secs = fields.Integer(load_default=None, validate=validate.Range(min=1, max=366 * 86_400))
    reason = Template(load_default=None, validate=validate.Length(max=2000))


class _Notify(_Strict):
    channel = fields.String(required=True, validate=validate.OneOf(NOTIFY_CHANNELS))
    user = fields.String(load_default=None, validate=validate.Regexp(NAME_PATTERN, error="a user name"))
    webhook = fields.String(load_default=None, validate=validate.Length(min=1, max=200))

    @validates_schema
    def _recipient(self, data: Mapping[str, Any], **_: Any) -> None:
        if data.get("channel") == "email" and not data.get("user"):
            raise ValidationError("an email goes to a user: name one", "user")
        if data.get("channel") == "webhook" and not (data.get("webhook") or data.get("user")):
            raise ValidationError("name the webhook (integrations.webhooks[].name) or a user whose contact has one",
                                  "webhook")


class _Wait(_Strict):
    seconds = fields.Float(required=True, validate=validate.Range(min=0.1, max=86_400))


class _SetStatus(_Strict):
    status = fields.String(required=True, validate=validate.OneOf(STATUS_NAMES))
    notes = fields.String(load_default=None, validate=validate.Length(max=10_000))


class _Assign(_Strict):
    assignee = fields.String(load_default=None, validate=validate.Length(min=1, max=200))
    team = fields.String(load_default=None, validate=validate.Length(min=1, max=200))

    @validates_schema
    def _something(self, data: Mapping[str, Any], **_: Any) -> None:
        if not data.get("assignee") and not data.get("team"):
            raise ValidationError("give an assignee, a team, or both", "assignee")


class _CreateJiraIssue(_Strict):
    pass


class _RunTask(_Strict):
    task = fields.String(required=True)
    args = fields.List(fields.Raw(), load_default=list, validate=validate.Length(max=50))
    kwargs = fields.Dict(keys=fields.String(), values=fields.Raw(), load_default=dict)

    @validates("task")
    def _allowed(self, value: str, **_: Any) -> None:
        from app.config import get_settings

        allowed = get_settings().playbook_tasks
        if value not in allowed:
            raise ValidationError(f"{value!r} is not an allowed task; allowed: {', '.join(allowed) or '(none)'} "
                                  "(PLAYBOOK_ALLOWED_TASKS)")


PARAMS: dict[str, type[Schema]] = {
    "http_request": _HttpRequest, "block_user": _BlockUser, "rate_limit": _RateLimit, "notify": _Notify,
    "wait": _Wait, "set_status": _SetStatus, "assign": _Assign, "create_jira_issue": _CreateJiraIssue,
    "run_task": _RunTask,
}
assert set(PARAMS) == set(STEP_TYPES)


class StepSchema(_Strict):
    """One step: `type` and its `params`, how long one attempt may take, how often it is tried
    again, what a failure does to the run, and whether a person must approve it first."""

    name = fields.String(load_default=None, validate=validate.Regexp(NAME_PATTERN, error="letters, digits, "
                                                                      "'.', '_', '@', '+' or '-'"))
    type = fields.String(required=True, validate=validate.OneOf(STEP_TYPES))
    params = fields.Dict(keys=fields.String(), values=fields.Raw(), load_default=dict)
    timeout_secs = fields.Float(load_default=30.0, validate=validate.Range(min=0.1, max=3600))
    retries = fields.Integer(load_default=0, validate=validate.Range(min=0, max=10))
    retry_delay_secs = fields.Float(load_default=1.0, validate=validate.Range(min=0, max=600))
    on_failure = fields.String(load_default="stop", validate=validate.OneOf(ON_FAILURE))
    destructive = fields.Boolean(load_default=False)

    @validates_schema(skip_on_field_errors=False)
    def _params(self, data: dict[str, Any], **_: Any) -> None:
        schema = PARAMS.get(data.get("type") or "")
        if schema is None:
            return
        try:
            data["params"] = schema().load(data.get("params") or {})
        except ValidationError as exc:
            raise ValidationError(exc.messages, "params") from None


class TriggersSchema(SingleValues, _Strict):
    """When the playbook runs by itself on a new incident: every condition given must hold."""

    severity = fields.List(fields.String(validate=validate.OneOf(SEVERITIES)))
    category = fields.List(fields.String(validate=validate.Length(min=1, max=100)))
    event_type = fields.List(fields.String(validate=validate.Length(min=1, max=100)))
    source = fields.List(fields.String(validate=validate.Length(min=1, max=100)))
    tags = fields.Dict(keys=fields.String(), values=fields.String())


class PlaybookSchema(_Strict):
    """A playbook: triggers (none: run by hand only) and 1 to 50 ordered steps."""

    name = fields.String(required=True, validate=validate.Regexp(
        NAME_PATTERN, error="letters, digits, '.', '_', '@', '+' or '-', at most 200 characters"))
    description = fields.String(validate=validate.Length(max=10_000))
    enabled = fields.Boolean(load_default=True)
    triggers = fields.Nested(TriggersSchema, load_default=dict)
    steps = fields.List(fields.Nested(StepSchema), required=True,
                        validate=validate.Length(min=1, max=50, error="a playbook needs 1 to 50 steps"))

    @validates_schema
    def _unique_step_names(self, data: dict[str, Any], **_: Any) -> None:
        seen: dict[str, int] = {}
        for i, step in enumerate(data.get("steps") or []):
            step["name"] = step.get("name") or f"{step['type']}-{i + 1}"
            if step["name"] in seen:
                message = f"{step['name']!r} is also the name of step {seen[step['name']]}"
                raise ValidationError({i: {"name": [message]}}, "steps")
            seen[step["name"]] = i
