"""`integrations.<name>.auto_remediation` of config.yaml (integration guide §3) and where each
integration's remediation endpoint is.

The guide's block loads as written:

    auto_remediation:
      enabled: true
      actions:
        - type: block_user
          conditions: {severity: [P0], event_type: [prompt_injection, data_leakage]}

Each action becomes a playbook of one step that runs automatically on the incidents of that
integration its conditions match (app/services/playbooks.py). The endpoint the action calls is
`endpoint` in the block, or `<NAME>_REMEDIATION_URL` in the environment (`SHIELD_REMEDIATION_URL`
for `llm-shield`, `EDGE_AGENT_REMEDIATION_URL` for `llm-edge-agent`), with an optional API key
(`authentication.api_key`, or `<NAME>_REMEDIATION_API_KEY`). docs/playbooks.md, "Remediation".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates

from app.config.schema import Bool, Int, SingleValues, StrList, load
from app.domain.playbook import REMEDIATION_ACTIONS
from app.domain.severity import SEVERITIES

# Integration clients with their own circuit breaker (app/config/outbound.py BUILTIN_TARGETS).
_BREAKERS = {"shield": "shield", "sentinel": "sentinel", "edge-agent": "edge-agent", "governance-core": "governance"}
DEFAULT_BREAKER = "playbooks"


@dataclass(frozen=True)
class RemediationAction:
    """One `auto_remediation.actions[]` entry: what to call and on which incidents."""

    type: str
    conditions: Mapping[str, Any] = field(default_factory=dict)
    duration_secs: int | None = None
    limit_rpm: int | None = None


@dataclass(frozen=True)
class RemediationSettings:
    integration: str
    enabled: bool = True
    endpoint: str = ""  # base URL; a step POSTs to `<endpoint>/<action>`
    api_key: str = field(default="", repr=False)
    timeout_secs: float = 10.0
    actions: tuple[RemediationAction, ...] = ()

    @property
    def breaker(self) -> str:
        return _BREAKERS.get(bare(self.integration), DEFAULT_BREAKER)


def bare(name: str) -> str:
    """`llm-shield` -> `shield`: the guide names integrations both ways."""
    return name[4:] if name.startswith("llm-") else name


def env_prefix(name: str) -> str:
    """`llm-edge-agent` -> `EDGE_AGENT` (of `EDGE_AGENT_REMEDIATION_URL`)."""
    return bare(name).upper().replace("-", "_")


def _url(value: str) -> None:
    if not value.startswith(("http://", "https://")):
        raise ValidationError("expected an http:// or https:// URL")


class _ConditionsSchema(SingleValues):
    class Meta:
        unknown = RAISE

    severity = StrList(validate=validate.ContainsOnly(SEVERITIES))
    event_type = StrList()
    category = StrList()
    tags = fields.Dict(keys=fields.String(), values=fields.String())


class _ActionSchema(Schema):
    class Meta:
        unknown = RAISE

    type = fields.String(required=True, validate=validate.OneOf(REMEDIATION_ACTIONS))
    conditions = fields.Nested(_ConditionsSchema, load_default=dict)
    duration_secs = Int(load_default=None, validate=validate.Range(min=1, max=366 * 86_400))
    limit_rpm = Int(load_default=None, validate=validate.Range(min=0))


class _AuthSchema(Schema):
    class Meta:
        unknown = RAISE

    type = fields.String(validate=validate.OneOf(("api_key",)))
    api_key = fields.String(load_default="")


class _AutoRemediationSchema(Schema):
    class Meta:
        unknown = RAISE

    enabled = Bool(load_default=True)
    endpoint = fields.String(load_default="")
    authentication = fields.Nested(_AuthSchema, load_default=dict)
    timeout_secs = fields.Float(load_default=10.0, validate=validate.Range(min=0.1, max=300))
    actions = fields.List(fields.Nested(_ActionSchema), load_default=list)

    @validates("endpoint")
    def _endpoint(self, value: str, **_: Any) -> None:
        if value:
            _url(value)


def _from_env(name: str, env: Mapping[str, str]) -> tuple[str, str]:
    prefix = env_prefix(name)
    return env.get(f"{prefix}_REMEDIATION_URL", ""), env.get(f"{prefix}_REMEDIATION_API_KEY", "")


def load_remediation(tree: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, RemediationSettings]:
    """Remediation settings by integration name (as written in config.yaml, and bare): every
    `auto_remediation` block, and every integration that has only `<NAME>_REMEDIATION_URL`."""
    section = tree.get("integrations") or {}
    result: dict[str, RemediationSettings] = {}
    for name, body in (section.items() if isinstance(section, Mapping) else ()):
        if not isinstance(body, Mapping) or body.get("auto_remediation") is None:
            continue
        key = f"integrations.{name}.auto_remediation"
        data = load(_AutoRemediationSchema(), body["auto_remediation"], key)
        url, api_key = _from_env(name, env)
        endpoint = data["endpoint"] or url
        if url and not data["endpoint"]:
            try:
                _url(url)
            except ValidationError:
                raise_env(name, url)
        settings = RemediationSettings(
            integration=str(name), enabled=data["enabled"], endpoint=endpoint.rstrip("/"),
            api_key=data["authentication"].get("api_key") or api_key, timeout_secs=data["timeout_secs"],
            actions=tuple(RemediationAction(a["type"], dict(a["conditions"]), a["duration_secs"], a["limit_rpm"])
                          for a in data["actions"]))
        result[str(name)] = settings
        result.setdefault(bare(str(name)), settings)
    for variable, url in env.items():
        if not variable.endswith("_REMEDIATION_URL"):
            continue
        name = variable[:-len("_REMEDIATION_URL")].lower().replace("_", "-")
        if name in result or f"llm-{name}" in result:
            continue
        if not url.startswith(("http://", "https://")):
            raise_env(name, url)
        result[name] = RemediationSettings(integration=f"llm-{name}", endpoint=url.rstrip("/"),
                                           api_key=_from_env(name, env)[1])
    return result


def raise_env(name: str, url: str) -> None:
    from app.config.schema import ConfigError

    raise ConfigError(f"{env_prefix(name)}_REMEDIATION_URL: expected an http:// or https:// URL, got {url!r}")


def remediation_for(remediation: Mapping[str, RemediationSettings], integration: str) -> RemediationSettings:
    """The settings of `integration` (`llm-shield` or `shield`); an empty one when nothing is configured."""
    return remediation.get(integration) or remediation.get(bare(integration)) \
        or RemediationSettings(integration=integration)


# Celery tasks a `run_task` step may enqueue (PLAYBOOK_ALLOWED_TASKS, comma-separated, replaces the list).
DEFAULT_PLAYBOOK_TASKS = ("escalation.sweep", "sla.check", "notifications.dispatch", "ml.check_retrain", "ml.train",
                          "ingest.relay_outbox")


def load_playbook_tasks(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("PLAYBOOK_ALLOWED_TASKS")
    if raw is None:
        return DEFAULT_PLAYBOOK_TASKS
    return tuple(part.strip() for part in raw.split(",") if part.strip())
