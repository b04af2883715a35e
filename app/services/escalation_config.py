"""Users, teams, on-call schedules, escalation policies and playbooks: one schema per shape (REST
and the YAML import both load through it), CRUD keyed by name, reference and cycle checks, and the
idempotent YAML import. See docs/escalation.md (playbooks: docs/playbooks.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates, validates_schema
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.adapters.db import read_session, unit_of_work
from app.adapters.escalation_models import EscalationPolicy, Schedule, Team, User
from app.adapters.playbook_models import Playbook
from app.domain import oncall
from app.domain.severity import SEVERITIES
from app.domain.times import iso as _iso
from app.services.playbook_schema import PlaybookSchema

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@+\-]{0,199}$"
TARGET_TYPES = ("user", "team", "schedule", "policy")
CHANNELS = ("email", "slack", "pagerduty", "sms", "phone", "webhook", "push")


def _name() -> fields.String:
    return fields.String(required=True, validate=validate.Regexp(
        NAME_PATTERN, error="letters, digits, '.', '_', '@', '+' or '-', at most 200 characters"))


def _ref() -> fields.String:
    return fields.String(validate=validate.Regexp(NAME_PATTERN, error="a name"))


def _time_zone(value: str) -> None:
    try:
        oncall.zone(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class UserSchema(_Strict):
    """A person who can be paged. `contact` maps a channel to the address on it."""

    name = _name()
    full_name = fields.String(allow_none=True, validate=validate.Length(max=200))
    email = fields.Email(allow_none=True)
    phone = fields.String(allow_none=True, validate=validate.Regexp(r"^\+?[0-9 ()\-]{3,40}$", error="a phone number"))
    contact = fields.Dict(keys=fields.String(validate=validate.OneOf(CHANNELS)),
                          values=fields.String(validate=validate.Length(min=1, max=500)))
    time_zone = fields.String(allow_none=True, validate=_time_zone)


class TeamSchema(_Strict):
    """A team: members (user names), optionally its on-call schedule and its own escalation policy.
    Paging a team pages its policy's first level if it has one, else who is on call on its
    schedule, else every member."""

    name = _name()
    description = fields.String(validate=validate.Length(max=10_000))
    members = fields.List(_ref(), validate=validate.Length(max=500))
    schedule = fields.String(allow_none=True, validate=validate.Regexp(NAME_PATTERN, error="a schedule name"))
    escalation_policy = fields.String(allow_none=True, validate=validate.Regexp(NAME_PATTERN, error="a policy name"))


class RotationLayerSchema(_Strict):
    name = fields.String(validate=validate.Length(min=1, max=100))
    participants = fields.List(_ref(), required=True, validate=validate.Length(min=1, max=200))
    rotation_length = fields.Integer(load_default=1, validate=validate.Range(min=1, max=10_000))
    rotation_unit = fields.String(load_default="days", validate=validate.OneOf(oncall.ROTATION_UNITS))
    handoff_time = fields.String(load_default="09:00")
    start = fields.Date(required=True)
    end = fields.AwareDateTime(allow_none=True, default_timezone=timezone.utc)
    time_zone = fields.String(allow_none=True, validate=_time_zone)

    @validates("handoff_time")
    def _handoff(self, value: str, **_: Any) -> None:
        try:
            oncall.parse_handoff(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class OverrideSchema(_Strict):
    user = fields.String(required=True, validate=validate.Regexp(NAME_PATTERN, error="a user name"))
    start = fields.AwareDateTime(required=True, default_timezone=timezone.utc)
    end = fields.AwareDateTime(required=True, default_timezone=timezone.utc)

    @validates_schema
    def _ordered(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("start") and data.get("end") and data["end"] <= data["start"]:
            raise ValidationError("must be after start", "end")


class ScheduleSchema(_Strict):
    """An on-call schedule: rotation layers (a later layer covers an earlier one) and overrides."""

    name = _name()
    description = fields.String(validate=validate.Length(max=10_000))
    time_zone = fields.String(required=True, validate=_time_zone)
    layers = fields.List(fields.Nested(RotationLayerSchema), required=True, validate=validate.Length(min=1, max=20))
    overrides = fields.List(fields.Nested(OverrideSchema), validate=validate.Length(max=1000))


class TargetSchema(_Strict):
    type = fields.String(required=True, validate=validate.OneOf(TARGET_TYPES))
    id = fields.String(required=True, validate=validate.Regexp(NAME_PATTERN, error="a name"))


class LevelSchema(_Strict):
    name = fields.String(validate=validate.Length(max=200))
    targets = fields.List(fields.Nested(TargetSchema), required=True, validate=validate.Length(min=1, max=50))
    channels = fields.List(fields.String(validate=validate.OneOf(CHANNELS)), load_default=["email"],
                           validate=validate.Length(min=1, max=len(CHANNELS)))
    # left out: `escalation.default_timeout_secs` of the configuration (taken into the incident's snapshot)
    escalate_after_secs = fields.Integer(validate=validate.Range(min=1, max=7 * 86_400))


class ConditionsSchema(_Strict):
    severity = fields.List(fields.String(validate=validate.OneOf(SEVERITIES)))
    category = fields.List(fields.String(validate=validate.Length(min=1, max=100)))
    service = fields.List(fields.String(validate=validate.Length(min=1, max=200)))


class PolicySchema(_Strict):
    """An escalation policy: ordered levels (level 1 is paged when escalation starts, level n+1
    `escalate_after_secs` of level n later), `repeat` more passes after the last level, and
    conditions (empty: every incident routed to it)."""

    name = _name()
    description = fields.String(validate=validate.Length(max=10_000))
    levels = fields.List(fields.Nested(LevelSchema), required=True,
                         validate=validate.Length(min=1, max=20, error="a policy needs 1 to 20 levels"))
    repeat = fields.Integer(load_default=0, validate=validate.Range(min=0, max=10))
    conditions = fields.Nested(ConditionsSchema, load_default=dict)


class NotFound(LookupError):
    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name!r} not found")
        self.kind = kind
        self.name = name


class Conflict(ValueError):
    def __init__(self, message: str, details: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.details = dict(details)


class Invalid(ValueError):
    """A document that passed its schema but not the checks against the stored objects (an unknown
    reference, a cycle); `details` names each field."""

    def __init__(self, message: str, details: Mapping[str, list[str]]) -> None:
        super().__init__(message)
        self.details = dict(details)


def _jsonable(value: Any) -> Any:
    """Dates and datetimes of a loaded document as ISO strings (the JSON columns store text)."""
    if isinstance(value, datetime):
        return _iso(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Kind:
    """One configuration object type: its table, schema, fields and their defaults."""

    name: str  # "user", "team", ...
    model: type
    schema: type[Schema]
    fields: tuple[str, ...]
    defaults: Mapping[str, Callable[[], Any]] = field(default_factory=dict)

    def to_dict(self, row: Any) -> dict[str, Any]:
        out = {"name": row.name, **{f: getattr(row, f) for f in self.fields}}
        if hasattr(row, "version"):
            out["version"] = row.version
        out["created_at"] = _iso(row.created_at)
        out["updated_at"] = _iso(row.updated_at)
        return out

    def value(self, key: str, data: Mapping[str, Any]) -> Any:
        value = data.get(key)
        if value is None and key in self.defaults:
            return self.defaults[key]()
        return _jsonable(value)


USER = Kind("user", User, UserSchema, ("full_name", "email", "phone", "contact", "time_zone"), {"contact": dict})
TEAM = Kind("team", Team, TeamSchema, ("description", "members", "schedule", "escalation_policy"),
            {"description": str, "members": list})
SCHEDULE = Kind("schedule", Schedule, ScheduleSchema, ("description", "time_zone", "layers", "overrides"),
                {"description": str, "overrides": list})
POLICY = Kind("escalation policy", EscalationPolicy, PolicySchema, ("description", "levels", "repeat", "conditions"),
              {"description": str, "repeat": int, "conditions": dict})
PLAYBOOK = Kind("playbook", Playbook, PlaybookSchema, ("description", "enabled", "triggers", "steps"),
                {"description": str, "enabled": lambda: True, "triggers": dict})
KINDS = {"users": USER, "teams": TEAM, "schedules": SCHEDULE, "escalation_policies": POLICY, "playbooks": PLAYBOOK}


def load(kind: Kind, document: Any, partial: bool = False) -> dict[str, Any]:
    """Validate one document with the kind's schema (marshmallow ValidationError on bad input)."""
    if partial:  # a PATCH may leave out top-level fields, never a level's, layer's or step's own
        return dict(kind.schema(partial=tuple(kind.schema().fields)).load(document))
    return dict(kind.schema().load(document))


# ------------------------------------------------------------------------------- reference checks

def _names(session: Session, model: type, wanted: Iterable[str]) -> set[str]:
    wanted = sorted(set(wanted))
    if not wanted:
        return set()
    return set(session.scalars(select(model.name).where(model.name.in_(wanted))))  # type: ignore[attr-defined]


def _missing(session: Session, model: type, refs: list[tuple[str, str]], what: str) -> dict[str, list[str]]:
    """{field path: [message]} for each (path, name) whose name is not stored."""
    known = _names(session, model, (name for _, name in refs))
    return {path: [f"no {what} named {name!r}"] for path, name in refs if name not in known}


def _policy_graph(session: Session, override: tuple[str, Mapping[str, Any]] | None) -> dict[str, set[str]]:
    """Edges between `policy:X` and `team:Y` nodes: a level's policy/team target, a team's policy.
    `override` replaces one stored object (kind-prefixed node, its document) by the candidate."""
    graph: dict[str, set[str]] = {}
    for policy in session.scalars(select(EscalationPolicy)):
        graph[f"policy:{policy.name}"] = _policy_edges(policy.levels)
    for team in session.scalars(select(Team)):
        graph[f"team:{team.name}"] = {f"policy:{team.escalation_policy}"} if team.escalation_policy else set()
    if override is not None:
        node, doc = override
        graph[node] = _policy_edges(doc.get("levels") or []) if node.startswith("policy:") else (
            {f"policy:{doc['escalation_policy']}"} if doc.get("escalation_policy") else set())
    return graph


def _policy_edges(levels: Iterable[Mapping[str, Any]]) -> set[str]:
    return {f"{t['type']}:{t['id']}" for level in levels for t in level.get("targets") or []
            if t.get("type") in ("policy", "team")}


def find_cycle(graph: Mapping[str, set[str]], start: str) -> list[str] | None:
    """The first cycle through `start` (as a node path ending where it began), else None."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return path + [nxt]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def _check(session: Session, kind: Kind, doc: Mapping[str, Any]) -> None:
    """References must exist; a policy/team chain must not loop back. Raises Invalid."""
    errors: dict[str, list[str]] = {}
    if kind is TEAM:
        errors.update(_missing(session, User, [(f"members[{i}]", m) for i, m in enumerate(doc.get("members") or [])],
                               "user"))
        if doc.get("schedule"):
            errors.update(_missing(session, Schedule, [("schedule", doc["schedule"])], "schedule"))
        if doc.get("escalation_policy"):
            errors.update(_missing(session, EscalationPolicy, [("escalation_policy", doc["escalation_policy"])],
                                   "escalation policy"))
    elif kind is SCHEDULE:
        refs = [(f"layers[{i}].participants[{j}]", p) for i, layer in enumerate(doc.get("layers") or [])
                for j, p in enumerate(layer.get("participants") or [])]
        refs += [(f"overrides[{i}].user", o["user"]) for i, o in enumerate(doc.get("overrides") or [])]
        errors.update(_missing(session, User, refs, "user"))
    elif kind is POLICY:
        by_type: dict[str, list[tuple[str, str]]] = {}
        for i, level in enumerate(doc.get("levels") or []):
            for j, target in enumerate(level.get("targets") or []):
                path = f"levels[{i}].targets[{j}].id"
                if target["type"] == "policy" and target["id"] == doc["name"]:
                    errors[path] = ["a policy cannot target itself (cycle)"]
                    continue
                by_type.setdefault(target["type"], []).append((path, target["id"]))
        models = {"user": (User, "user"), "team": (Team, "team"), "schedule": (Schedule, "schedule"),
                  "policy": (EscalationPolicy, "escalation policy")}
        for target_type, refs in by_type.items():
            model, what = models[target_type]
            errors.update(_missing(session, model, refs, what))
    if kind in (POLICY, TEAM) and not errors:
        node = f"{'policy' if kind is POLICY else 'team'}:{doc['name']}"
        cycle = find_cycle(_policy_graph(session, (node, doc)), node)
        if cycle:
            where = "levels" if kind is POLICY else "escalation_policy"
            errors[where] = [f"escalation cycle: {' -> '.join(cycle)}"]
    if errors:
        raise Invalid(f"{len(errors)} invalid field(s) in {kind.name} {doc.get('name')!r}", errors)


def _referenced_by(session: Session, kind: Kind, name: str) -> list[str]:
    """What still points at this object (deleting it would leave a dangling reference)."""
    users: list[str] = []
    if kind is PLAYBOOK:
        return users  # nothing refers to a playbook by name (a run carries its own copy)
    if kind is USER:
        users += [f"team {t.name}" for t in session.scalars(select(Team)) if name in (t.members or [])]
        users += [f"schedule {s.name}" for s in session.scalars(select(Schedule))
                  if any(name in (layer.get("participants") or []) for layer in s.layers or [])
                  or any(o.get("user") == name for o in s.overrides or [])]
    if kind is SCHEDULE:
        users += [f"team {t.name}" for t in session.scalars(select(Team).where(Team.schedule == name))]
    if kind is POLICY:
        users += [f"team {t.name}" for t in session.scalars(select(Team).where(Team.escalation_policy == name))]
    target_type = {USER.name: "user", TEAM.name: "team", SCHEDULE.name: "schedule", POLICY.name: "policy"}[kind.name]
    users += [f"escalation policy {p.name}" for p in session.scalars(select(EscalationPolicy))
              if any(t.get("type") == target_type and t.get("id") == name
                     for level in p.levels or [] for t in level.get("targets") or [])]
    return users


# ------------------------------------------------------------------------------------------- CRUD

def list_objects(kind: Kind, limit: int = 100, after: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Objects by name; keyset pagination on the name."""
    model: Any = kind.model
    with read_session() as session:
        query = select(model).order_by(model.name).limit(limit + 1)
        if after:
            query = query.where(model.name > after)
        rows = list(session.scalars(query))
    next_cursor = rows[limit - 1].name if len(rows) > limit else None
    return [kind.to_dict(r) for r in rows[:limit]], next_cursor


def get_object(kind: Kind, name: str) -> dict[str, Any]:
    with read_session() as session:
        row = session.get(kind.model, name)
        if row is None:
            raise NotFound(kind.name, name)
        return kind.to_dict(row)


def create_object(kind: Kind, data: Mapping[str, Any]) -> dict[str, Any]:
    """Create one validated document; Conflict when the name is taken, Invalid on a bad reference."""
    now = datetime.now(timezone.utc)
    with unit_of_work() as session:
        if session.get(kind.model, data["name"]) is not None:
            raise Conflict(f"{kind.name} {data['name']!r} already exists", {"name": [f"{data['name']!r} is taken"]})
        _check(session, kind, data)
        row = kind.model(name=data["name"], created_at=now, updated_at=now,
                         **{f: kind.value(f, data) for f in kind.fields})
        session.add(row)
        session.flush()
        return kind.to_dict(row)


def update_object(kind: Kind, name: str, data: Mapping[str, Any], replace: bool = False) -> dict[str, Any]:
    """PATCH (the given fields) or PUT (`replace`: absent fields reset to their defaults). A policy's
    version goes up by one: incidents already escalating keep the snapshot they took."""
    model: Any = kind.model
    with unit_of_work() as session:
        row = session.scalars(select(model).where(model.name == name).with_for_update()).first()
        if row is None:
            raise NotFound(kind.name, name)
        merged = {"name": name, **{f: kind.value(f, data) if (f in data or replace) else getattr(row, f)
                                   for f in kind.fields}}
        _check(session, kind, merged)
        for f in kind.fields:
            if f in data or replace:
                setattr(row, f, kind.value(f, data))
        if hasattr(row, "version"):  # a policy's or playbook's runs in flight keep the version they took
            row.version += 1
        row.updated_at = datetime.now(timezone.utc)
        session.flush()
        return kind.to_dict(row)


def delete_object(kind: Kind, name: str) -> None:
    """Delete; Conflict while another object still refers to it."""
    with unit_of_work() as session:
        row = session.scalars(select(kind.model).where(kind.model.name == name).with_for_update()).first()  # type: ignore[attr-defined]
        if row is None:
            raise NotFound(kind.name, name)
        users = _referenced_by(session, kind, name)
        if users:
            raise Conflict(f"{kind.name} {name!r} is still referenced by {', '.join(users[:10])}",
                           {"referenced_by": users})
        session.delete(row)


def on_call(name: str, at: datetime) -> dict[str, Any]:
    """Who is on call on schedule `name` at `at`, with the shift (or override) that puts them there."""
    with read_session() as session:
        row = session.get(Schedule, name)
        if row is None:
            raise NotFound(SCHEDULE.name, name)
        doc: dict[str, Any] = {"time_zone": row.time_zone, "layers": row.layers or [],
                               "overrides": row.overrides or []}
    who = oncall.on_call_at(doc, at)
    return {
        "schedule": name, "at": _iso(at), "time_zone": doc["time_zone"],
        "local_time": at.astimezone(oncall.zone(doc["time_zone"])).isoformat(),
        "on_call": None if who is None else {
            "user": who.user, "source": who.source, "shift_start": _iso(who.shift_start),
            "shift_end": _iso(who.shift_end)},
    }


# ------------------------------------------------------------------------------------ YAML import

class ImportError_(ValueError):
    """The YAML document is not a valid configuration; `details` names each problem."""

    def __init__(self, message: str, details: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.details = dict(details)


@dataclass
class ImportResult:
    created: dict[str, list[str]] = field(default_factory=dict)
    updated: dict[str, list[str]] = field(default_factory=dict)
    unchanged: dict[str, list[str]] = field(default_factory=dict)


# Users first, policies last: each kind may refer to the ones before it (a team's policy is checked
# after the policies are written, in the same transaction). Playbooks refer to nothing stored.
IMPORT_ORDER = ("users", "schedules", "teams", "escalation_policies", "playbooks")


def import_yaml(text: str) -> ImportResult:
    """Upsert the users, schedules, teams, escalation policies and playbooks of a YAML document, by name, in one
    transaction: all or nothing. Importing the same file twice changes nothing the second time."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ImportError_(f"not valid YAML: {exc}", {"_schema": [str(exc)]}) from None
    if not isinstance(document, Mapping):
        raise ImportError_("expected a mapping with users, teams, schedules, escalation_policies and/or playbooks",
                           {"_schema": ["expected a mapping"]})
    unknown = sorted(set(document) - set(KINDS))
    errors: dict[str, Any] = {key: [f"unknown section; expected one of {', '.join(KINDS)}"] for key in unknown}
    loaded: dict[str, list[dict[str, Any]]] = {}
    for section in IMPORT_ORDER:
        entries = document.get(section) or []
        if not isinstance(entries, list):
            errors[section] = ["expected a list"]
            continue
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            try:
                doc = load(KINDS[section], entry)
            except ValidationError as exc:
                errors[f"{section}[{i}]"] = exc.messages
                continue
            if doc["name"] in seen:
                errors[f"{section}[{i}].name"] = [f"{doc['name']!r} appears twice"]
            seen.add(doc["name"])
            loaded.setdefault(section, []).append(doc)
    if errors:
        raise ImportError_(f"{len(errors)} invalid entr(y/ies); nothing was imported", errors)
    result = ImportResult()
    now = datetime.now(timezone.utc)
    with unit_of_work() as session:
        written: list[tuple[Kind, dict[str, Any], str]] = []
        for section in IMPORT_ORDER:
            kind = KINDS[section]
            model: Any = kind.model
            for doc in loaded.get(section, []):
                values = {f: kind.value(f, doc) for f in kind.fields}
                row = session.scalars(select(model).where(model.name == doc["name"]).with_for_update()).first()
                if row is None:
                    session.add(model(name=doc["name"], created_at=now, updated_at=now, **values))
                    result.created.setdefault(section, []).append(doc["name"])
                elif any(getattr(row, f) != v for f, v in values.items()):
                    for f, v in values.items():
                        setattr(row, f, v)
                    if hasattr(row, "version"):
                        row.version += 1
                    row.updated_at = now
                    result.updated.setdefault(section, []).append(doc["name"])
                else:
                    result.unchanged.setdefault(section, []).append(doc["name"])
                written.append((kind, {"name": doc["name"], **values}, section))
            session.flush()
        problems: dict[str, Any] = {}
        for kind, doc, section in written:  # every reference checked once all objects are in place
            try:
                _check(session, kind, doc)
            except Invalid as exc:
                problems[f"{section}.{doc['name']}"] = exc.details
        if problems:
            raise ImportError_(f"{len(problems)} entr(y/ies) refer to unknown objects or loop; nothing was imported",
                               problems)
    return result
