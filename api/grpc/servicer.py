"""`incident_manager.IncidentService`: thin handlers (authenticate, parse, call one service, render)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterator, Mapping

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from marshmallow import ValidationError
from prometheus_client import Counter, Histogram

import proto
from api.grpc.auth import CallRefused, GrpcAuthenticator
from api.links import incident_links
from api.schemas import field_errors, flat_field_errors, load_event, to_new_event
from app.adapters.db import DatabaseUnavailable
from app.config import Settings
from app.domain.incident import STATUS_NAMES, IllegalTransition, IncidentNotFound
from app.domain.severity import SEVERITIES
from app.domain.times import iso
from app.metrics import LATENCY_BUCKETS
from app.services import changes, incidents
from app.services.correlation import analyze_correlations
from app.services.group_commit import GroupCommitter
from app.services.ingest import Dispatcher, NewEvent, ingest_events

pb2, pb2_grpc = proto.load()
log = logging.getLogger(__name__)

GRPC_REQUESTS = Counter("incident_manager_grpc_requests_total", "gRPC calls answered", ["method", "code"])
GRPC_DURATION = Histogram("incident_manager_grpc_request_duration_seconds", "gRPC call latency", ["method"],
                          buckets=LATENCY_BUCKETS)

CHANGE_KINDS = ("incident_created", "incident_updated", "incident_acknowledged", "incident_resolved",
                "incident_closed", "incident_merged")
ACCEPTED_MESSAGE = "Event received and queued for processing"
DUPLICATE_MESSAGE = "Duplicate event: already received; nothing changed"


class InvalidArgument(ValueError):
    """A request field is missing or malformed (INVALID_ARGUMENT)."""


EVENT_REFUSED = "the event does not match the schema"


def invalid_event_status(exc: ValidationError) -> grpc.Status:
    """A refused event as INVALID_ARGUMENT with the REST door's field errors: the message lists them
    (what grpcurl shows), and `google.rpc.BadRequest` field violations carry them one by one in the
    standard rich error details (`grpc-status-details-bin`)."""
    pairs = flat_field_errors(field_errors(exc))
    message = f"{EVENT_REFUSED}: " + "; ".join(f"{name}: {text}" for name, text in pairs)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=name, description=text) for name, text in pairs]))
    return rpc_status.to_status(status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message,
                                                  details=[detail]))


def _observed(method: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Count and time a unary call; map domain errors to status codes in one place."""

    def decorate(handler: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: "IncidentServicer", request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return handler(self, request, context)
            except InvalidArgument as exc:
                code = grpc.StatusCode.INVALID_ARGUMENT
                context.abort(code, str(exc))
            except ValidationError as exc:
                code = grpc.StatusCode.INVALID_ARGUMENT
                context.abort_with_status(invalid_event_status(exc))
            except IncidentNotFound as exc:
                code = grpc.StatusCode.NOT_FOUND
                context.abort(code, str(exc))
            except IllegalTransition as exc:
                code = grpc.StatusCode.FAILED_PRECONDITION
                context.abort(code, str(exc))
            except CallRefused as exc:
                code = exc.code
                context.abort(code, exc.message)
            except DatabaseUnavailable as exc:  # nothing stored: the client may call again
                code = grpc.StatusCode.UNAVAILABLE
                context.abort(code, str(exc))
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("grpc handler failed", extra={"method": method})
                context.abort(code, "internal error")
            finally:
                GRPC_REQUESTS.labels(method, code.name).inc()
                GRPC_DURATION.labels(method).observe(time.perf_counter() - started)

        wrapper.__name__ = handler.__name__
        wrapper.__doc__ = handler.__doc__
        return wrapper

    return decorate


# ------------------------------------------------------------------------------------------ parsing

_REQUEST_STRINGS = ("event_id", "source", "source_version", "timestamp", "event_type", "category", "title",
                    "description", "severity", "service", "dedup_key")


def _resource_dict(resource: Any) -> dict[str, Any]:
    out: dict[str, Any] = {name: getattr(resource, name) for name in ("type", "id", "name") if getattr(resource, name)}
    if resource.metadata:
        out["metadata"] = dict(resource.metadata)
    return out


def request_payload(request: Any) -> dict[str, Any]:
    """The request as proto3 JSON with original field names (what MessageToDict gives, without its
    cost), minus `encrypted_payload`: the raw payload ingest stores."""
    raw: dict[str, Any] = {name: getattr(request, name) for name in _REQUEST_STRINGS if getattr(request, name)}
    if request.HasField("resource"):
        raw["resource"] = _resource_dict(request.resource)
    if request.metrics:
        raw["metrics"] = dict(request.metrics)
    if request.tags:
        raw["tags"] = dict(request.tags)
    return raw


def request_to_event(request: Any) -> NewEvent:
    """CreateIncidentRequest → NewEvent, validated by the one event validator of every door
    (`api.schemas.load_event`; raises its ValidationError). proto3 cannot tell an empty string from
    an absent one, so an empty required field is "missing". `encrypted_payload` is kept apart from
    the stored raw payload and never logged."""
    raw = request_payload(request)
    return to_new_event(load_event(raw), raw, encrypted_payload=bytes(request.encrypted_payload) or None)


def request_to_changes(request: Any) -> dict[str, Any]:
    """UpdateIncidentRequest → the fields to change."""
    fields: dict[str, Any] = {}
    for name in ("status", "severity", "assignee", "team", "title", "description"):
        if request.HasField(name):
            fields[name] = getattr(request, name)
    if "status" in fields and fields["status"] not in STATUS_NAMES:
        raise InvalidArgument(f"status must be one of {', '.join(STATUS_NAMES)}")
    if "severity" in fields and fields["severity"] not in SEVERITIES:
        raise InvalidArgument(f"severity must be one of {', '.join(SEVERITIES)}")
    if "title" in fields and not fields["title"].strip():
        raise InvalidArgument("title cannot be empty")
    if request.tags or request.clear_tags:
        fields["tags"] = dict(request.tags)
    if request.resolution_notes:
        fields["resolution_notes"] = request.resolution_notes
    if request.root_cause:
        fields["root_cause"] = request.root_cause
    if not fields:
        raise InvalidArgument("nothing to change: give status, severity, assignee, team, title, description or tags")
    if ("resolution_notes" in fields or "root_cause" in fields) and fields.get("status") != "RESOLVED":
        raise InvalidArgument("resolution_notes and root_cause go with status RESOLVED")
    return fields


# ------------------------------------------------------------------------------------------ rendering

def _str(value: Any) -> str:
    return "" if value is None else str(value)


def incident_message(incident: Mapping[str, Any], change: str = "") -> Any:
    """An incident dict (incidents.incident_to_dict, or the smaller dict ingest publishes) → Incident."""
    sla = incident.get("sla") or {}
    message = pb2.Incident(
        id=_str(incident.get("id")), status=_str(incident.get("status")), severity=_str(incident.get("severity")),
        title=_str(incident.get("title")), description=_str(incident.get("description")),
        created_at=_str(incident.get("created_at")), updated_at=_str(incident.get("updated_at")),
        category=_str(incident.get("category")), source=_str(incident.get("source")),
        source_severity=_str(incident.get("source_severity")), event_type=_str(incident.get("event_type")),
        assignee=_str(incident.get("assignee")), team=_str(incident.get("team")),
        service=_str(incident.get("service")),
        tags={str(k): _str(v) for k, v in (incident.get("tags") or {}).items()},
        correlation_group_id=_str(incident.get("correlation_group_id")),
        event_count=int(incident.get("event_count") or 0), fingerprint=_str(incident.get("fingerprint")),
        acknowledged_at=_str(incident.get("acknowledged_at")), acknowledged_by=_str(incident.get("acknowledged_by")),
        resolved_at=_str(incident.get("resolved_at")), closed_at=_str(incident.get("closed_at")),
        escalation_policy=_str(incident.get("escalation_policy")),
        escalation_level=int((incident.get("escalation") or {}).get("level") or 0),
        merged_into=_str(incident.get("merged_into")),
        metrics={str(k): float(v) for k, v in (incident.get("metrics") or {}).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)},
        predicted_severity=_str(incident.get("predicted_severity")),
        confidence=float(incident.get("confidence") or 0.0),
        first_seen=_str(incident.get("first_seen")), last_seen=_str(incident.get("last_seen")),
        change=change,
    )
    if sla:
        message.sla.CopyFrom(pb2.Sla(
            acknowledge_by=_str(sla.get("acknowledge_by")), resolve_by=_str(sla.get("resolve_by")),
            acknowledgment_breached=bool(sla.get("acknowledgment_breached")),
            resolution_breached=bool(sla.get("resolution_breached")),
        ))
    reason = incident.get("severity_reason")
    if isinstance(reason, Mapping) and reason:
        message.severity_reason.CopyFrom(pb2.SeverityReason(
            **{name: _str(reason.get(name)) for name in ("decided_by", "source_severity", "mapped_source_severity",
                                                         "predicted_severity", "model_version", "why", "actor")},
            confidence=float(reason.get("confidence") or 0.0)))
    resource = incident.get("resource")
    if isinstance(resource, Mapping) and resource:
        message.resource.CopyFrom(pb2.Resource(
            type=_str(resource.get("type")), id=_str(resource.get("id")), name=_str(resource.get("name")),
            metadata={str(k): _str(v) for k, v in (resource.get("metadata") or {}).items()},
        ))
    return message


# ------------------------------------------------------------------------------------------ service

class IncidentServicer(pb2_grpc.IncidentServiceServicer):  # type: ignore[misc,name-defined]
    def __init__(self, settings: Settings, dispatcher: Dispatcher | None, stream_idle_secs: float = 1.0) -> None:
        self.auth = GrpcAuthenticator(settings)
        self.dispatcher = dispatcher
        self.stream_idle_secs = stream_idle_secs
        # A stream holds a server thread for its life: at most half the pool, so unary calls never starve.
        self.max_streams = max(1, settings.grpc_max_workers // 2)
        self._streams = threading.BoundedSemaphore(self.max_streams)
        # Concurrent CreateIncident calls share one transaction; each answers after its commit.
        self.committer = GroupCommitter(
            lambda events: ingest_events(events, dispatcher=dispatcher, door="grpc"), door="grpc")

    @_observed("CreateIncident")
    def CreateIncident(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Ingest one event; answers after commit (and after Shield's auto-page, when configured)."""
        self.auth.principal(context, "event:create")
        event = request_to_event(request)
        result = self.committer.submit(event)
        return pb2.CreateIncidentResponse(
            status=result.status, incident_id=result.incident_id or "", event_id=result.event_id,
            message=ACCEPTED_MESSAGE if result.status == "accepted" else DUPLICATE_MESSAGE,
            links=incident_links(result.incident_id), created=result.created,
        )

    @_observed("GetIncident")
    def GetIncident(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.auth.principal(context, "incident:read")
        if not request.incident_id:
            raise InvalidArgument("incident_id is required")
        return incident_message(incidents.get_incident(request.incident_id))

    @_observed("UpdateIncident")
    def UpdateIncident(self, request: Any, context: grpc.ServicerContext) -> Any:
        principal = self.auth.principal(context, "incident:write")
        if not request.incident_id:
            raise InvalidArgument("incident_id is required")
        fields = request_to_changes(request)
        return incident_message(incidents.update_incident(request.incident_id, request.actor or principal.name, fields))

    @_observed("AnalyzeCorrelations")
    def AnalyzeCorrelations(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.auth.principal(context, "incident:read")
        if not request.incident_id:
            raise InvalidArgument("incident_id is required")
        if request.time_window_secs < 0 or request.limit < 0:
            raise InvalidArgument("time_window_secs and limit must not be negative")
        found = analyze_correlations(request.incident_id, request.time_window_secs, request.limit)
        return pb2.CorrelationResult(
            incident_id=found.incident_id, group_id=found.group_id or "", analyzed_at=iso(found.analyzed_at),
            time_window_secs=found.time_window_secs,
            correlations=[pb2.Correlation(incident_id=r.incident_id, score=r.score, reasons=list(r.reasons),
                                          title=r.title, severity=r.severity, status=r.status,
                                          created_at=iso(r.created_at)) for r in found.related],
        )

    def StreamIncidents(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        """Committed incident changes from the moment the call starts. Initial metadata
        (`x-subscribed: 1`) is sent once the subscription is live, so a client that waits for it
        misses nothing created afterwards."""
        severities, kinds, sources = set(request.severities), set(request.changes), set(request.sources)
        try:
            self.auth.principal(context, "incident:read")
            if severities - set(SEVERITIES):
                raise CallRefused(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"severities must be within {', '.join(SEVERITIES)}")
            if kinds - set(CHANGE_KINDS):
                raise CallRefused(grpc.StatusCode.INVALID_ARGUMENT, f"changes must be within {', '.join(CHANGE_KINDS)}")
        except CallRefused as exc:
            GRPC_REQUESTS.labels("StreamIncidents", exc.code.name).inc()
            context.abort(exc.code, exc.message)
        if not self._streams.acquire(blocking=False):
            GRPC_REQUESTS.labels("StreamIncidents", "RESOURCE_EXHAUSTED").inc()
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"at most {self.max_streams} concurrent streams (half of GRPC_MAX_WORKERS); retry later")
        try:
            yield from self._stream(severities, sources, kinds, context)
        finally:
            self._streams.release()

    def _stream(self, severities: set[str], sources: set[str], kinds: set[str],
                context: grpc.ServicerContext) -> Iterator[Any]:
        GRPC_REQUESTS.labels("StreamIncidents", "OK").inc()
        feed = changes.subscribe(timeout=self.stream_idle_secs)
        first = next(feed)  # subscribes, then waits up to stream_idle_secs
        context.send_initial_metadata((("x-subscribed", "1"),))
        pending = [first]
        try:
            while context.is_active():
                message = pending.pop() if pending else next(feed)
                if message is None:
                    continue
                incident = message.get("incident") or {}
                if severities and incident.get("severity") not in severities:
                    continue
                if sources and incident.get("source") not in sources:
                    continue
                if kinds and message.get("kind") not in kinds:
                    continue
                yield incident_message(incident, change=str(message.get("kind") or ""))
        finally:
            feed.close()  # type: ignore[attr-defined]  # a generator: closing ends the Redis subscription
