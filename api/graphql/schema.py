"""The GraphQL schema (graphene). Resolvers are thin: they call the services REST calls and render
rows with the same functions, so both doors give the same answers (docs/graphql.md).

Field names: the contract's documents use both conventions (`createdAt`, `resolutionDeadline`
beside the governance query's `created_at`, `root_cause`, `acknowledgment_breached`), and their
queries must run verbatim, so camelCase fields have snake_case twins where the documents use them.
The schema is built with `auto_camelcase=False`: every name is written here as it appears."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

import graphene
from graphene.types.generic import GenericScalar
from graphql import GraphQLError
from graphql.language import ast
from marshmallow import ValidationError

from api.graphql.loaders import GraphQLContext
from api.schemas import FeedbackSchema
from app.domain.incident import STATUS_NAMES, IllegalTransition, IncidentNotFound
from app.domain.severity import SEVERITIES
from app.services import analytics, correlation, feedback, incidents, service_catalog
from app.services import escalation_config as config

MAX_PAGE = 500  # as REST's `limit`
DEFAULT_PAGE = 50
DEFAULT_EVENTS = 20


# ----------------------------------------------------------------------------------------- errors

class OperationError(GraphQLError):
    """A refused operation: `extensions.code` says which kind (as REST's error codes), `details`
    names the fields."""

    def __init__(self, code: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, extensions={"code": code, "details": dict(details or {})})


def call(fn: Callable[[], Any]) -> Any:
    """Run a service call; its domain errors become GraphQL errors with the REST code."""
    try:
        return fn()
    except IncidentNotFound as exc:
        raise OperationError("not_found", str(exc), {"incident_id": exc.incident_id}) from None
    except IllegalTransition as exc:
        raise OperationError("illegal_transition", str(exc), {"incident_id": exc.incident_id, "status": exc.current,
                                                              "requested": exc.target}) from None
    except ValidationError as exc:
        details = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        summary = "; ".join(f"{k}: {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in details.items())
        raise OperationError("validation_failed", f"the input does not match the schema: {summary}", details) from None
    except (incidents.InvalidCursor, analytics.InvalidQuery) as exc:
        raise OperationError("validation_failed", str(exc), getattr(exc, "details", {})) from None
    except feedback.InvalidFeedback as exc:
        raise OperationError("validation_failed", str(exc), getattr(exc, "errors", {})) from None
    except (config.NotFound, correlation.GroupNotFound, service_catalog.ServiceNotFound) as exc:
        raise OperationError("not_found", str(exc)) from None


def _value(item: Any) -> Any:
    """Graphene hands enum inputs over as members; the services take their values."""
    return getattr(item, "value", item)


def _values(items: Sequence[Any] | None) -> list[Any]:
    return [_value(i) for i in items or []]


# ---------------------------------------------------------------------------------------- scalars

class DateTime(graphene.Scalar):
    """ISO 8601; answers are UTC with `Z` (as REST), inputs may carry any offset."""

    @staticmethod
    def serialize(value: Any) -> str | None:
        if isinstance(value, datetime):
            return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
        return None if value is None else str(value)

    @staticmethod
    def parse_value(value: Any) -> datetime:
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise GraphQLError(f"DateTime: {value!r} is not an ISO 8601 date-time") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)

    @classmethod
    def parse_literal(cls, node: Any, _variables: Any = None) -> datetime:
        if not isinstance(node, ast.StringValueNode):
            raise GraphQLError("DateTime: expected a string such as \"2025-11-01T00:00:00Z\"")
        return cls.parse_value(node.value)


class Label(graphene.Scalar):
    """A name such as a category or an environment, written as a string or bare, like an enum
    value (the guide writes `category: [security, compliance]`)."""

    @staticmethod
    def serialize(value: Any) -> str:
        return str(value)

    @staticmethod
    def parse_value(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise GraphQLError(f"Label: expected a non-empty name, got {value!r}")
        return value.strip()

    @classmethod
    def parse_literal(cls, node: Any, _variables: Any = None) -> str:
        if isinstance(node, (ast.StringValueNode, ast.EnumValueNode)):
            return cls.parse_value(node.value)
        raise GraphQLError("Label: expected a name (bare or quoted)")


Severity = graphene.Enum("Severity", [(s, s) for s in SEVERITIES])
IncidentStatus = graphene.Enum("IncidentStatus", [(s, s) for s in STATUS_NAMES])


class SortDirection(graphene.Enum):
    ASC = "ASC"
    DESC = "DESC"


class IncidentOrderField(graphene.Enum):
    CREATED_AT = "CREATED_AT"


class MetricsDimension(graphene.Enum):
    SEVERITY = "severity"
    CATEGORY = "category"
    TEAM = "team"
    SOURCE = "source"


class UpdateType(graphene.Enum):
    CREATED = "CREATED"
    UPDATED = "UPDATED"
    ACKNOWLEDGED = "ACKNOWLEDGED"
    RESOLVED = "RESOLVED"
    CLOSED = "CLOSED"
    MERGED = "MERGED"
    ESCALATED = "ESCALATED"
    SLA_BREACHED = "SLA_BREACHED"


# ------------------------------------------------------------------------------------------ types

def _key(name: str) -> Callable[..., Any]:
    return lambda root, _info: root.get(name) if isinstance(root, Mapping) else None


class Resolution(graphene.ObjectType):
    resolvedBy = graphene.String(resolver=_key("resolved_by"))
    resolved_by = graphene.String(resolver=_key("resolved_by"))
    method = graphene.String(resolver=_key("method"))
    notes = graphene.String(resolver=_key("notes"))
    rootCause = graphene.String(resolver=_key("root_cause"))
    root_cause = graphene.String(resolver=_key("root_cause"))
    actionsTaken = graphene.List(graphene.NonNull(graphene.String), resolver=_key("actions_taken"))
    actions_taken = graphene.List(graphene.NonNull(graphene.String), resolver=_key("actions_taken"))


class Sla(graphene.ObjectType):
    acknowledgmentDeadline = DateTime(resolver=_key("acknowledge_by"))
    acknowledge_by = DateTime(resolver=_key("acknowledge_by"))
    resolutionDeadline = DateTime(resolver=_key("resolve_by"))
    resolve_by = DateTime(resolver=_key("resolve_by"))
    acknowledgmentBreached = graphene.Boolean(resolver=_key("acknowledgment_breached"))
    acknowledgment_breached = graphene.Boolean(resolver=_key("acknowledgment_breached"))
    resolutionBreached = graphene.Boolean(resolver=_key("resolution_breached"))
    resolution_breached = graphene.Boolean(resolver=_key("resolution_breached"))


class Escalation(graphene.ObjectType):
    level = graphene.Int(resolver=_key("level"))
    nextEscalationAt = DateTime(resolver=_key("next_escalation_at"))


class Person(graphene.ObjectType):
    name = graphene.String(resolver=_key("name"))
    email = graphene.String(resolver=_key("email"))
    username = graphene.String(resolver=_key("username"), description="the configured user's name, when one matches")


class TimelineEntry(graphene.ObjectType):
    id = graphene.ID(resolver=_key("id"))
    at = DateTime(resolver=_key("at"))
    actor = graphene.String(resolver=_key("actor"))
    kind = graphene.String(resolver=_key("kind"))
    field = graphene.String(resolver=_key("field"))
    oldValue = graphene.String(resolver=_key("old_value"))
    newValue = graphene.String(resolver=_key("new_value"))
    details = GenericScalar(resolver=_key("details"))


class Event(graphene.ObjectType):
    id = graphene.ID(resolver=_key("id"))
    source = graphene.String(resolver=_key("source"))
    eventId = graphene.String(resolver=_key("event_id"))
    eventType = graphene.String(resolver=_key("event_type"))
    severity = graphene.String(resolver=_key("severity"), description="as the source sent it")
    title = graphene.String(resolver=_key("title"))
    occurredAt = DateTime(resolver=_key("occurred_at"))
    receivedAt = DateTime(resolver=_key("received_at"))
    processedAt = DateTime(resolver=_key("processed_at"))
    payload = GenericScalar(resolver=_key("payload"))


class CorrelationMember(graphene.ObjectType):
    incidentId = graphene.ID(resolver=_key("incident_id"))
    score = graphene.Float(resolver=_key("score"))
    reasons = GenericScalar(resolver=_key("reasons"))
    root = graphene.Boolean(resolver=_key("root"))
    addedAt = DateTime(resolver=_key("added_at"))
    incident = graphene.Field(lambda: Incident)

    @staticmethod
    def resolve_incident(root: Mapping[str, Any], info: Any) -> Any:
        return info.context.loaders.incidents.load(root["incident_id"])


class CorrelationGroup(graphene.ObjectType):
    id = graphene.ID(resolver=_key("id"))
    rootIncidentId = graphene.ID(resolver=_key("root_incident_id"))
    score = graphene.Float(resolver=_key("score"))
    reasons = GenericScalar(resolver=_key("reasons"))
    memberCount = graphene.Int(resolver=_key("member_count"))
    createdAt = DateTime(resolver=_key("created_at"))
    updatedAt = DateTime(resolver=_key("updated_at"))
    members = graphene.List(graphene.NonNull(CorrelationMember))

    @staticmethod
    def resolve_members(root: Mapping[str, Any], info: Any) -> Any:
        ctx: GraphQLContext = info.context
        return ctx.loaders.members.load(root["id"])


class Incident(graphene.ObjectType):
    """An incident, as GET /api/v1/incidents/{id} shows it."""

    id = graphene.ID(required=True, resolver=_key("id"))
    title = graphene.String(resolver=_key("title"))
    description = graphene.String(resolver=_key("description"))
    severity = graphene.Field(Severity, resolver=_key("severity"))
    status = graphene.Field(IncidentStatus, resolver=_key("status"))
    state = graphene.Field(IncidentStatus, resolver=_key("status"), description="another name of `status`")
    category = graphene.String(resolver=_key("category"))
    source = graphene.String(resolver=_key("source"))
    eventType = graphene.String(resolver=_key("event_type"))
    incidentType = graphene.String(resolver=_key("event_type"))
    fingerprint = graphene.String(resolver=_key("fingerprint"))
    eventCount = graphene.Int(resolver=_key("event_count"))
    sourceSeverity = graphene.String(resolver=_key("source_severity"))
    predictedSeverity = graphene.String(resolver=_key("predicted_severity"))
    predictedCategory = graphene.String(resolver=_key("predicted_category"))
    confidence = graphene.Float(resolver=_key("confidence"))
    severityReason = GenericScalar(resolver=_key("severity_reason"))
    firstSeen = DateTime(resolver=_key("first_seen"))
    lastSeen = DateTime(resolver=_key("last_seen"))
    createdAt = DateTime(resolver=_key("created_at"))
    created_at = DateTime(resolver=_key("created_at"))
    updatedAt = DateTime(resolver=_key("updated_at"))
    updated_at = DateTime(resolver=_key("updated_at"))
    acknowledgedAt = DateTime(resolver=_key("acknowledged_at"))
    acknowledged_at = DateTime(resolver=_key("acknowledged_at"))
    acknowledgedBy = graphene.String(resolver=_key("acknowledged_by"))
    resolvedAt = DateTime(resolver=_key("resolved_at"))
    resolved_at = DateTime(resolver=_key("resolved_at"))
    closedAt = DateTime(resolver=_key("closed_at"))
    closed_at = DateTime(resolver=_key("closed_at"))
    assignee = graphene.String(resolver=_key("assignee"))
    assignedTo = graphene.Field(Person)
    team = graphene.String(resolver=_key("team"))
    service = graphene.String(resolver=_key("service"))
    escalationPolicy = graphene.String(resolver=_key("escalation_policy"))
    environment = graphene.String(description="the `environment` tag")
    tags = GenericScalar(resolver=_key("tags"))
    resource = GenericScalar(resolver=_key("resource"))
    metrics = GenericScalar(resolver=_key("metrics"))
    enrichment = GenericScalar(resolver=_key("enrichment"))
    mergedInto = graphene.ID(resolver=_key("merged_into"))
    processedAt = DateTime(resolver=_key("processed_at"))
    resolution = graphene.Field(Resolution, resolver=_key("resolution"))
    sla = graphene.Field(Sla, resolver=_key("sla"))
    escalation = graphene.Field(Escalation, resolver=_key("escalation"))
    correlationGroupId = graphene.ID(resolver=_key("correlation_group_id"))
    correlationGroup = graphene.Field(CorrelationGroup)
    timeline = graphene.List(graphene.NonNull(TimelineEntry))
    events = graphene.List(graphene.NonNull(Event), first=graphene.Int(default_value=DEFAULT_EVENTS))

    @staticmethod
    def resolve_environment(root: Mapping[str, Any], _info: Any) -> Any:
        return (root.get("tags") or {}).get("environment")

    @staticmethod
    def resolve_assignedTo(root: Mapping[str, Any], info: Any) -> Any:
        name = root.get("assignee")
        return info.context.loaders.assignees.load(name) if name else None

    @staticmethod
    def resolve_timeline(root: Mapping[str, Any], info: Any) -> Any:
        return info.context.loaders.timelines.load(root["id"])

    @staticmethod
    def resolve_events(root: Mapping[str, Any], info: Any, first: int = DEFAULT_EVENTS) -> Any:
        if not 1 <= first <= MAX_PAGE:
            raise OperationError("validation_failed", f"events(first:) must be 1..{MAX_PAGE}",
                                 {"first": [f"must be between 1 and {MAX_PAGE}"]})
        return info.context.loaders.events(first).load(root["id"])

    @staticmethod
    def resolve_correlationGroup(root: Mapping[str, Any], info: Any) -> Any:
        return info.context.loaders.groups_of.load(root["id"])


class PageInfo(graphene.ObjectType):
    hasNextPage = graphene.Boolean(required=True)
    hasPreviousPage = graphene.Boolean(required=True)
    startCursor = graphene.String()
    endCursor = graphene.String()


class IncidentEdge(graphene.ObjectType):
    node = graphene.Field(Incident, required=True, resolver=_key("node"))
    cursor = graphene.String(required=True, resolver=_key("cursor"))


class IncidentConnection(graphene.ObjectType):
    edges = graphene.List(graphene.NonNull(IncidentEdge), required=True, resolver=_key("edges"))
    nodes = graphene.List(graphene.NonNull(Incident), required=True)
    pageInfo = graphene.Field(PageInfo, required=True, resolver=_key("pageInfo"))
    totalCount = graphene.Int(required=True, description="incidents the filter matches, on every page")

    @staticmethod
    def resolve_nodes(root: Mapping[str, Any], _info: Any) -> Any:
        return [edge["node"] for edge in root["edges"]]

    @staticmethod
    def resolve_totalCount(root: Mapping[str, Any], _info: Any) -> int:
        return call(lambda: incidents.count_incidents(root["filter"]))


class DateRange(graphene.InputObjectType):
    start = DateTime()
    end = DateTime()


class IncidentFilterInput(graphene.InputObjectType):
    severity = graphene.List(graphene.NonNull(Severity))
    status = graphene.List(graphene.NonNull(IncidentStatus))
    state = graphene.List(graphene.NonNull(IncidentStatus), description="another name of `status`")
    category = graphene.List(graphene.NonNull(Label))
    source = graphene.List(graphene.NonNull(graphene.String))
    team = graphene.List(graphene.NonNull(graphene.String))
    environment = graphene.List(graphene.NonNull(Label), description="the `environment` tag, any case")
    dateRange = graphene.InputField(DateRange, description="created within [start, end]")
    search = graphene.String(description="words in the title or description")


class Pagination(graphene.InputObjectType):
    page = graphene.Int(default_value=1)
    pageSize = graphene.Int(default_value=DEFAULT_PAGE)


class IncidentOrder(graphene.InputObjectType):
    field = graphene.InputField(IncidentOrderField, default_value="CREATED_AT")
    direction = graphene.InputField(SortDirection, default_value="DESC")


def incident_filter(flt: Mapping[str, Any] | None) -> incidents.IncidentFilter:
    flt = flt or {}
    dates = flt.get("dateRange") or {}
    return incidents.IncidentFilter(
        status=_values(flt.get("status")) + _values(flt.get("state")), severity=_values(flt.get("severity")),
        source=list(flt.get("source") or []), category=[c.lower() for c in flt.get("category") or []],
        team=list(flt.get("team") or []), environment=list(flt.get("environment") or []),
        created_after=dates.get("start"), created_before=dates.get("end"), q=flt.get("search"),
    )


def _page_size(name: str, value: int) -> int:
    if not 1 <= value <= MAX_PAGE:
        raise OperationError("validation_failed", f"{name} must be 1..{MAX_PAGE}",
                             {name: [f"must be between 1 and {MAX_PAGE}"]})
    return value


def list_page(ctx: GraphQLContext, flt: incidents.IncidentFilter, first: int | None, after: str | None,
              order: Mapping[str, Any] | None, pagination: Mapping[str, Any] | None) -> dict[str, Any]:
    """One page of the connection: keyset after a cursor, or page/pageSize."""
    ascending = _value((order or {}).get("direction", "DESC")) == "ASC"
    offset = 0
    if pagination is not None:
        size = _page_size("pagination.pageSize", int(pagination.get("pageSize") or DEFAULT_PAGE))
        page = int(pagination.get("page") or 1)
        if page < 1:
            raise OperationError("validation_failed", "pagination.page starts at 1",
                                 {"pagination.page": ["must be >= 1"]})
        offset = (page - 1) * size
        if after:
            raise OperationError("validation_failed", "give either `after` or `pagination`, not both",
                                 {"after": ["not with pagination"]})
    else:
        size = _page_size("first", DEFAULT_PAGE if first is None else first)
    rows, next_cursor = call(lambda: incidents.list_incidents(flt, size, after, ascending=ascending, offset=offset))
    ctx.loaders.seen(rows)
    edges = [{"node": row, "cursor": incidents.encode_cursor(_parse(row["created_at"]), row["id"])} for row in rows]
    return {"edges": edges, "filter": flt, "pageInfo": {
        "hasNextPage": next_cursor is not None, "hasPreviousPage": bool(after) or offset > 0,
        "startCursor": edges[0]["cursor"] if edges else None, "endCursor": edges[-1]["cursor"] if edges else None}}


def _parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


# ----------------------------------------------------------------------------------------- metrics

class Durations(graphene.ObjectType):
    mean = graphene.Float(resolver=_key("mean"))
    p50 = graphene.Float(resolver=_key("p50"))
    p90 = graphene.Float(resolver=_key("p90"))


class SeverityCount(graphene.ObjectType):
    severity = graphene.String(resolver=_key("key"))
    count = graphene.Int(resolver=_key("count"))
    averageMTTA = graphene.Float(resolver=lambda r, _i: r["mtta_secs"]["mean"])
    averageMTTR = graphene.Float(resolver=lambda r, _i: r["mttr_secs"]["mean"])
    slaCompliance = graphene.Float(resolver=lambda r, _i: r["sla"]["compliance"])


class CategoryCount(graphene.ObjectType):
    category = graphene.String(resolver=_key("key"))
    count = graphene.Int(resolver=_key("count"))
    averageMTTA = graphene.Float(resolver=lambda r, _i: r["mtta_secs"]["mean"])
    averageMTTR = graphene.Float(resolver=lambda r, _i: r["mttr_secs"]["mean"])
    slaCompliance = graphene.Float(resolver=lambda r, _i: r["sla"]["compliance"])


class MetricsGroup(graphene.ObjectType):
    dimension = graphene.Field(MetricsDimension, resolver=_key("dimension"))
    key = graphene.String(resolver=_key("key"))
    count = graphene.Int(resolver=_key("count"))
    acknowledged = graphene.Int(resolver=_key("acknowledged"))
    resolved = graphene.Int(resolver=_key("resolved"))
    averageMTTA = graphene.Float(resolver=lambda r, _i: r["mtta_secs"]["mean"])
    averageMTTR = graphene.Float(resolver=lambda r, _i: r["mttr_secs"]["mean"])
    slaCompliance = graphene.Float(resolver=lambda r, _i: r["sla"]["compliance"])


class IncidentMetrics(graphene.ObjectType):
    """Incidents created in the time range (app/services/analytics.py, as GET /api/v1/metrics/incidents).
    Durations are seconds; compliance is the share of incidents without an SLA breach (0..1)."""

    start = DateTime(resolver=lambda r, _i: r["range"][0])
    end = DateTime(resolver=lambda r, _i: r["range"][1])
    totalIncidents = graphene.Int()
    acknowledged = graphene.Int()
    resolved = graphene.Int()
    averageMTTA = graphene.Float()
    averageMTTR = graphene.Float()
    mtta = graphene.Field(Durations)
    mttr = graphene.Field(Durations)
    slaCompliance = graphene.Float()
    acknowledgmentCompliance = graphene.Float()
    resolutionCompliance = graphene.Float()
    bySeverity = graphene.List(graphene.NonNull(SeverityCount))
    byCategory = graphene.List(graphene.NonNull(CategoryCount))
    groups = graphene.List(graphene.NonNull(MetricsGroup), description="one entry per key of each groupBy dimension")

    @staticmethod
    def _totals(root: Mapping[str, Any], info: Any) -> dict[str, Any]:
        # a grouped call also holds the totals (GROUPING SETS): reuse whichever ran first
        cache = info.context.cache
        for dim in (root["group_by"] or []):
            found = cache.get((root["range"], dim))
            if found is not None:
                return dict(found["totals"])
        dim = (root["group_by"] or [None])[0]
        return dict(_metrics(info, root, dim)["totals"])

    @classmethod
    def resolve_totalIncidents(cls, root: Any, info: Any) -> Any:
        return cls._totals(root, info)["count"]

    @classmethod
    def resolve_acknowledged(cls, root: Any, info: Any) -> Any:
        return cls._totals(root, info)["acknowledged"]

    @classmethod
    def resolve_resolved(cls, root: Any, info: Any) -> Any:
        return cls._totals(root, info)["resolved"]

    @classmethod
    def resolve_averageMTTA(cls, root: Any, info: Any) -> Any:
        return cls._totals(root, info)["mtta_secs"]["mean"]

    @classmethod
    def resolve_averageMTTR(cls, root: Any, info: Any) -> Any:
        return cls._totals(root, info)["mttr_secs"]["mean"]

    @classmethod
    def resolve_mtta(cls, root: Any, info: Any) -> Any:
        return cls._totals(root, info)["mtta_secs"]

    @classmethod
    def resolve_mttr(cls, root: Any, info: Any) -> Any:
        return cls._totals(root, info)["mttr_secs"]

    @classmethod
    def resolve_slaCompliance(cls, root: Any, info: Any) -> Any:
        return cls._totals(root, info)["sla"]["compliance"]

    @classmethod
    def resolve_acknowledgmentCompliance(cls, root: Any, info: Any) -> Any:
        return cls._totals(root, info)["sla"]["acknowledge_compliance"]

    @classmethod
    def resolve_resolutionCompliance(cls, root: Any, info: Any) -> Any:
        return cls._totals(root, info)["sla"]["resolve_compliance"]

    @staticmethod
    def resolve_bySeverity(root: Any, info: Any) -> Any:
        return _metrics(info, root, "severity")["groups"]

    @staticmethod
    def resolve_byCategory(root: Any, info: Any) -> Any:
        return _metrics(info, root, "category")["groups"]

    @staticmethod
    def resolve_groups(root: Any, info: Any) -> Any:
        return [{"dimension": dim, **group} for dim in root["group_by"] or []
                for group in _metrics(info, root, dim)["groups"]]


def _metrics(info: Any, root: Mapping[str, Any], dim: str | None) -> dict[str, Any]:
    """One analytics call per (range, dimension) per request."""
    cache = info.context.cache
    key = (root["range"], dim)
    if key not in cache:
        start, end = root["range"]
        cache[key] = call(lambda: analytics.incident_metrics(start, end, dim))
    return dict(cache[key])


class TimeRange(graphene.InputObjectType):
    start = DateTime()
    end = DateTime()


# ------------------------------------------------------------------------------ configuration types

class Team(graphene.ObjectType):
    name = graphene.ID(resolver=_key("name"))
    description = graphene.String(resolver=_key("description"))
    members = GenericScalar(resolver=_key("members"))
    schedule = graphene.String(resolver=_key("schedule"))
    escalationPolicy = graphene.String(resolver=_key("escalation_policy"))
    createdAt = DateTime(resolver=_key("created_at"))
    updatedAt = DateTime(resolver=_key("updated_at"))


class OnCall(graphene.ObjectType):
    user = graphene.String(resolver=_key("user"))
    source = graphene.String(resolver=_key("source"))
    shiftStart = DateTime(resolver=_key("shift_start"))
    shiftEnd = DateTime(resolver=_key("shift_end"))


class Schedule(graphene.ObjectType):
    name = graphene.ID(resolver=_key("name"))
    description = graphene.String(resolver=_key("description"))
    timeZone = graphene.String(resolver=_key("time_zone"))
    layers = GenericScalar(resolver=_key("layers"))
    overrides = GenericScalar(resolver=_key("overrides"))
    onCall = graphene.Field(OnCall, at=DateTime(description="default: now"))
    createdAt = DateTime(resolver=_key("created_at"))
    updatedAt = DateTime(resolver=_key("updated_at"))

    @staticmethod
    def resolve_onCall(root: Mapping[str, Any], _info: Any, at: datetime | None = None) -> Any:
        return call(lambda: config.on_call(root["name"], at or datetime.now(timezone.utc)))["on_call"]


class EscalationPolicy(graphene.ObjectType):
    name = graphene.ID(resolver=_key("name"))
    description = graphene.String(resolver=_key("description"))
    levels = GenericScalar(resolver=_key("levels"))
    repeat = graphene.Int(resolver=_key("repeat"))
    conditions = GenericScalar(resolver=_key("conditions"))
    version = graphene.Int(resolver=_key("version"))
    createdAt = DateTime(resolver=_key("created_at"))
    updatedAt = DateTime(resolver=_key("updated_at"))


class Service(graphene.ObjectType):
    name = graphene.ID(resolver=_key("name"))
    description = graphene.String(resolver=_key("description"))
    ownerTeam = graphene.String(resolver=_key("owner_team"))
    tier = graphene.String(resolver=_key("tier"))
    dependencies = GenericScalar(resolver=_key("dependencies"))
    runbookUrl = graphene.String(resolver=_key("runbook_url"))
    escalationPolicy = graphene.String(resolver=_key("escalation_policy"))
    tags = GenericScalar(resolver=_key("tags"))


def _all(lister: Callable[[int, str | None], tuple[list[dict[str, Any]], str | None]], first: int) -> list[Any]:
    items, _ = call(lambda: lister(_page_size("first", first), None))
    return items


# ------------------------------------------------------------------------------------------- query

class Query(graphene.ObjectType):
    incident = graphene.Field(Incident, id=graphene.ID(required=True),
                              description="follows merged_into, as GET /api/v1/incidents/{id}")
    incidents = graphene.Field(
        IncidentConnection, required=True, filter=IncidentFilterInput(), first=graphene.Int(), after=graphene.String(),
        orderBy=IncidentOrder(), pagination=Pagination(),
        description=f"newest first unless orderBy says otherwise; first defaults to {DEFAULT_PAGE}, at most {MAX_PAGE}")
    incidentMetrics = graphene.Field(IncidentMetrics, required=True, timeRange=TimeRange(),
                                     groupBy=graphene.List(graphene.NonNull(MetricsDimension)))
    correlationGroup = graphene.Field(CorrelationGroup, id=graphene.ID(required=True))
    correlationGroups = graphene.List(graphene.NonNull(CorrelationGroup),
                                      first=graphene.Int(default_value=DEFAULT_PAGE), after=graphene.String())
    teams = graphene.List(graphene.NonNull(Team), first=graphene.Int(default_value=100))
    team = graphene.Field(Team, name=graphene.ID(required=True))
    schedules = graphene.List(graphene.NonNull(Schedule), first=graphene.Int(default_value=100))
    schedule = graphene.Field(Schedule, name=graphene.ID(required=True))
    escalationPolicies = graphene.List(graphene.NonNull(EscalationPolicy), first=graphene.Int(default_value=100))
    escalationPolicy = graphene.Field(EscalationPolicy, name=graphene.ID(required=True))
    services = graphene.List(graphene.NonNull(Service), first=graphene.Int(default_value=100))
    service = graphene.Field(Service, name=graphene.ID(required=True))

    @staticmethod
    def resolve_incident(_root: Any, info: Any, id: str) -> Any:  # noqa: A002  (GraphQL's argument name)
        try:
            found = incidents.get_incident(id)
        except IncidentNotFound:
            return None
        info.context.loaders.seen([found])
        return found

    @staticmethod
    def resolve_incidents(_root: Any, info: Any, filter: Mapping[str, Any] | None = None,  # noqa: A002
                          first: int | None = None, after: str | None = None,
                          orderBy: Mapping[str, Any] | None = None,
                          pagination: Mapping[str, Any] | None = None) -> Any:
        return list_page(info.context, incident_filter(filter), first, after, orderBy, pagination)

    @staticmethod
    def resolve_incidentMetrics(_root: Any, _info: Any, timeRange: Mapping[str, Any] | None = None,
                                groupBy: Sequence[Any] | None = None) -> Any:
        window = timeRange or {}
        end = window.get("end") or datetime.now(timezone.utc)
        start = window.get("start") or end - analytics.DEFAULT_RANGE
        if start >= end:
            raise OperationError("validation_failed", "timeRange.start must be before timeRange.end",
                                 {"timeRange.start": ["must be before `end`"]})
        # The guide's `end: ...T23:59:59Z` means the whole last second: the analytics range is [start, end).
        if end.microsecond == 0 and window.get("end"):
            end = end.replace(microsecond=999_999)
        dims = list(dict.fromkeys(_values(groupBy)))
        return {"range": (start, end), "group_by": dims}

    @staticmethod
    def resolve_correlationGroup(_root: Any, info: Any, id: str) -> Any:  # noqa: A002
        return info.context.loaders.groups.load(id)

    @staticmethod
    def resolve_correlationGroups(_root: Any, _info: Any, first: int = DEFAULT_PAGE, after: str | None = None) -> Any:
        items, _ = call(lambda: correlation.list_groups(_page_size("first", first), after))
        return items

    @staticmethod
    def resolve_teams(_root: Any, _info: Any, first: int = 100) -> Any:
        return _all(lambda n, a: config.list_objects(config.TEAM, n, a), first)

    @staticmethod
    def resolve_team(_root: Any, _info: Any, name: str) -> Any:
        return _optional(lambda: config.get_object(config.TEAM, name))

    @staticmethod
    def resolve_schedules(_root: Any, _info: Any, first: int = 100) -> Any:
        return _all(lambda n, a: config.list_objects(config.SCHEDULE, n, a), first)

    @staticmethod
    def resolve_schedule(_root: Any, _info: Any, name: str) -> Any:
        return _optional(lambda: config.get_object(config.SCHEDULE, name))

    @staticmethod
    def resolve_escalationPolicies(_root: Any, _info: Any, first: int = 100) -> Any:
        return _all(lambda n, a: config.list_objects(config.POLICY, n, a), first)

    @staticmethod
    def resolve_escalationPolicy(_root: Any, _info: Any, name: str) -> Any:
        return _optional(lambda: config.get_object(config.POLICY, name))

    @staticmethod
    def resolve_services(_root: Any, _info: Any, first: int = 100) -> Any:
        return _all(service_catalog.list_services, first)

    @staticmethod
    def resolve_service(_root: Any, _info: Any, name: str) -> Any:
        return _optional(lambda: service_catalog.get_service(name))


def _optional(fn: Callable[[], Any]) -> Any:
    """A lookup by name: null when there is no such object (GraphQL's convention for a single field)."""
    try:
        return fn()
    except (config.NotFound, service_catalog.ServiceNotFound):
        return None


# --------------------------------------------------------------------------------------- mutations

class CreateIncidentInput(graphene.InputObjectType):
    title = graphene.String(required=True)
    severity = graphene.String(required=True, description="P0..P4, or a source severity such as critical")
    description = graphene.String()
    source = graphene.String()
    category = Label()
    incidentType = graphene.String()
    eventId = graphene.String(description="idempotency: a repeated eventId answers the first incident")
    service = graphene.String()
    team = graphene.String()
    assignee = graphene.String()
    tags = GenericScalar()


class ResolveIncidentInput(graphene.InputObjectType):
    resolvedBy = graphene.String()
    method = graphene.String()
    notes = graphene.String()
    rootCause = graphene.String()
    actionsTaken = graphene.List(graphene.NonNull(graphene.String))
    severity = graphene.Field(Severity, description="the corrected severity (feeds learning)")


class UpdateIncidentInput(graphene.InputObjectType):
    status = graphene.Field(IncidentStatus)
    state = graphene.Field(IncidentStatus, description="another name of `status`")
    severity = graphene.Field(Severity)
    assignee = graphene.String()
    team = graphene.String()
    title = graphene.String()
    description = graphene.String()
    tags = GenericScalar()
    actor = graphene.String()


class FeedbackInput(graphene.InputObjectType):
    severity = graphene.Field(Severity)
    category = Label()
    notes = graphene.String()
    actor = graphene.String()


class FeedbackSample(graphene.ObjectType):
    id = graphene.ID(resolver=_key("id"))
    incidentId = graphene.ID(resolver=_key("incident_id"))
    severity = graphene.String(resolver=_key("severity"))
    category = graphene.String(resolver=_key("category"))
    origin = graphene.String(resolver=_key("origin"))
    createdAt = DateTime(resolver=_key("created_at"))
    pendingSamples = graphene.Int(resolver=_key("pending_samples"))


def _snake(data: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    return {names.get(k, k): _value(v) if not isinstance(v, list) else _values(v)
            for k, v in data.items() if v is not None}


def _actor(info: Any, explicit: str | None = None) -> str:
    principal = info.context.principal
    return explicit or (principal.name if principal is not None else "graphql")


def _shown(info: Any, incident: dict[str, Any]) -> dict[str, Any]:
    info.context.loaders.seen([incident])
    return incident


class CreateIncident(graphene.Mutation):
    class Arguments:
        input = CreateIncidentInput(required=True)

    Output = Incident

    @staticmethod
    def mutate(_root: Any, info: Any, input: Mapping[str, Any]) -> Any:  # noqa: A002
        from api.schemas import ManualIncidentSchema
        from tasks.dispatch import dispatch_pipeline_in_background

        body = _snake(input, {"incidentType": "incident_type", "eventId": "event_id"})
        data = call(lambda: ManualIncidentSchema().load(body))
        event = incidents.manual_event(data, body, requested_by=_actor(info))
        incident, _created = call(lambda: incidents.create_manual(event, dispatcher=dispatch_pipeline_in_background))
        return _shown(info, incident)


class AcknowledgeIncident(graphene.Mutation):
    class Arguments:
        id = graphene.ID(required=True)
        actor = graphene.String()

    Output = Incident

    @staticmethod
    def mutate(_root: Any, info: Any, id: str, actor: str | None = None) -> Any:  # noqa: A002
        from api.schemas import AcknowledgeSchema

        data = call(lambda: AcknowledgeSchema().load({"actor": actor} if actor is not None else {}))
        return _shown(info, call(lambda: incidents.acknowledge(id, _actor(info, data.get("actor")))))


class ResolveIncident(graphene.Mutation):
    class Arguments:
        id = graphene.ID(required=True)
        input = ResolveIncidentInput()

    Output = Incident

    @staticmethod
    def mutate(_root: Any, info: Any, id: str, input: Mapping[str, Any] | None = None) -> Any:  # noqa: A002
        from api.schemas import ResolveSchema

        body = _snake(input or {}, {"resolvedBy": "resolved_by", "rootCause": "root_cause",
                                    "actionsTaken": "actions_taken"})
        data = call(lambda: ResolveSchema().load(body))
        return _shown(info, call(lambda: incidents.resolve(
            id, _actor(info, data.get("resolved_by")), method=data.get("method", "Manual"), notes=data.get("notes"),
            root_cause=data.get("root_cause"), actions_taken=data.get("actions_taken"),
            corrected_severity=data.get("severity"))))


class UpdateIncident(graphene.Mutation):
    class Arguments:
        id = graphene.ID(required=True)
        input = UpdateIncidentInput(required=True)

    Output = Incident

    @staticmethod
    def mutate(_root: Any, info: Any, id: str, input: Mapping[str, Any]) -> Any:  # noqa: A002
        from api.schemas import PatchIncidentSchema

        body = _snake(input, {"state": "status"})
        data = call(lambda: PatchIncidentSchema().load(body))
        actor = _actor(info, data.pop("actor", None))
        return _shown(info, call(lambda: incidents.patch(id, actor, data)))


class SubmitFeedback(graphene.Mutation):
    """The true severity/category of an incident (as POST /api/v1/incidents/{id}/feedback)."""

    class Arguments:
        incidentId = graphene.ID(required=True)
        input = FeedbackInput(required=True)

    Output = FeedbackSample

    @staticmethod
    def mutate(_root: Any, info: Any, incidentId: str, input: Mapping[str, Any]) -> Any:  # noqa: A002

        data = call(lambda: FeedbackSchema().load(_snake(input, {})))
        return call(lambda: feedback.record_feedback(incidentId, _actor(info, data.get("actor")),
                                                     severity=data.get("severity"), category=data.get("category"),
                                                     notes=data.get("notes")))


class PlaybookRun(graphene.ObjectType):
    """A playbook run, as GET /api/v1/playbook-runs/{id} shows it."""

    id = graphene.ID(resolver=_key("id"))
    playbook = graphene.String(resolver=_key("playbook"))
    playbookVersion = graphene.Int(resolver=_key("playbook_version"))
    incidentId = graphene.ID(resolver=_key("incident_id"))
    trigger = graphene.String(resolver=_key("trigger"))
    actor = graphene.String(resolver=_key("actor"))
    status = graphene.String(resolver=_key("status"))
    currentStep = graphene.Int(resolver=_key("current_step"))
    error = graphene.String(resolver=_key("error"))
    createdAt = DateTime(resolver=_key("created_at"))
    startedAt = DateTime(resolver=_key("started_at"))
    finishedAt = DateTime(resolver=_key("finished_at"))
    steps = GenericScalar(resolver=_key("steps"))


class RunPlaybook(graphene.Mutation):
    """Run a playbook on an incident now (as POST /api/v1/incidents/{id}/playbooks/{name}/run): the
    run is queued; its steps execute on the `playbooks` queue."""

    class Arguments:
        incidentId = graphene.ID(required=True)
        playbook = graphene.String(required=True)

    Output = PlaybookRun

    @staticmethod
    def mutate(_root: Any, info: Any, incidentId: str, playbook: str) -> Any:  # noqa: N803
        from app.services import playbooks
        from tasks.queue import celery_task_queue

        try:
            return call(lambda: playbooks.start_run(incidentId, playbook, _actor(info), celery_task_queue()))
        except playbooks.PlaybookUnavailable as exc:
            raise OperationError("conflict", str(exc), {"playbook": [str(exc)]}) from None


class Mutation(graphene.ObjectType):
    runPlaybook = RunPlaybook.Field()
    createIncident = CreateIncident.Field()
    acknowledgeIncident = AcknowledgeIncident.Field()
    resolveIncident = ResolveIncident.Field()
    updateIncident = UpdateIncident.Field()
    submitFeedback = SubmitFeedback.Field()


# ----------------------------------------------------------------------------------- subscriptions

class IncidentUpdate(graphene.ObjectType):
    incident = graphene.Field(Incident, resolver=_key("incident"))
    updateType = graphene.Field(UpdateType, resolver=_key("update_type"))
    changedFields = graphene.List(graphene.NonNull(graphene.String), resolver=_key("changed_fields"))
    changes = GenericScalar(resolver=_key("changes"))
    timestamp = DateTime(resolver=_key("timestamp"))


class StateChange(graphene.ObjectType):
    incidentId = graphene.ID(resolver=lambda r, _i: r["incident"]["id"])
    incident = graphene.Field(Incident, resolver=_key("incident"))
    oldState = graphene.Field(IncidentStatus, resolver=_key("old_state"))
    newState = graphene.Field(IncidentStatus, resolver=_key("new_state"))
    changedBy = graphene.String(resolver=_key("changed_by"))
    timestamp = DateTime(resolver=_key("timestamp"))


class Alert(graphene.ObjectType):
    """An alert submission that opened an incident (the change stream announces openings; an event
    joining an open incident shows as an `incidentUpdates` UPDATED)."""

    id = graphene.ID(resolver=lambda r, _i: r["incident"]["id"])
    incidentId = graphene.ID(resolver=lambda r, _i: r["incident"]["id"])
    source = graphene.String(resolver=lambda r, _i: r["incident"].get("source"))
    title = graphene.String(resolver=lambda r, _i: r["incident"].get("title"))
    severity = graphene.Field(Severity, resolver=lambda r, _i: r["incident"].get("severity"))
    category = graphene.String(resolver=lambda r, _i: r["incident"].get("category"))
    receivedAt = DateTime(resolver=_key("timestamp"))
    incident = graphene.Field(Incident, resolver=_key("incident"))


class UpdateFilter(graphene.InputObjectType):
    severity = graphene.List(graphene.NonNull(Severity))
    status = graphene.List(graphene.NonNull(IncidentStatus))
    state = graphene.List(graphene.NonNull(IncidentStatus))
    source = graphene.List(graphene.NonNull(graphene.String))
    category = graphene.List(graphene.NonNull(Label))
    updateTypes = graphene.List(graphene.NonNull(UpdateType))


class Subscription(graphene.ObjectType):
    """Fed by the change stream (api/graphql/hub.py turns each committed change into the root value
    these resolvers read); only matching changes reach a subscriber."""

    criticalIncidents = graphene.Field(Incident, description="P0 and P1 incidents as they open or become P0/P1")
    newIncidents = graphene.Field(Incident, severities=graphene.List(graphene.NonNull(Severity)))
    incidentUpdates = graphene.Field(IncidentUpdate, severities=graphene.List(graphene.NonNull(Severity)))
    incidentUpdated = graphene.Field(IncidentUpdate, filter=UpdateFilter())
    incidentStateChanges = graphene.Field(StateChange, incidentId=graphene.ID())
    alerts = graphene.Field(Alert, severities=graphene.List(graphene.NonNull(Severity)))

    @staticmethod
    def resolve_criticalIncidents(root: Mapping[str, Any], _info: Any) -> Any:
        return root["incident"]

    @staticmethod
    def resolve_newIncidents(root: Mapping[str, Any], _info: Any, **_: Any) -> Any:
        return root["incident"]

    @staticmethod
    def resolve_incidentUpdates(root: Mapping[str, Any], _info: Any, **_: Any) -> Any:
        return root

    @staticmethod
    def resolve_incidentUpdated(root: Mapping[str, Any], _info: Any, **_: Any) -> Any:
        return root

    @staticmethod
    def resolve_incidentStateChanges(root: Mapping[str, Any], _info: Any, **_: Any) -> Any:
        return root

    @staticmethod
    def resolve_alerts(root: Mapping[str, Any], _info: Any, **_: Any) -> Any:
        return root


schema = graphene.Schema(query=Query, mutation=Mutation, subscription=Subscription, auto_camelcase=False)
