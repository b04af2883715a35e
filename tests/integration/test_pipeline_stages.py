"""The stages as services on the real database (no worker needed: they are plain functions):
dedup merges and recurrences, routing precedence, enrichment failures and timeouts, idempotency."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from werkzeug import Request, Response

from app.adapters.db import read_session, unit_of_work
from app.adapters.models import Event, Incident, OutboxMessage, TimelineEntry
from app.adapters.pipeline_models import CorrelationGroup, CorrelationMember
from app.config import IntegrationSettings, RoutingRule, get_settings
from app.services import pipeline, service_catalog
from app.services.ingest import NewEvent, ingest_events

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def fresh_enrichment_cache(test_env: dict[str, str]) -> None:
    """Enrichment answers cached in Redis by an earlier test must not leak into this one."""
    import redis

    client = redis.Redis.from_url(test_env["REDIS_URL"])
    for key in client.scan_iter("im:enrich:*"):
        client.delete(key)


def _new(i: int, **overrides: Any) -> NewEvent:
    fields: dict[str, Any] = dict(source="llm-sentinel", event_id=f"e-{i}", title=f"Latency spike {i}", raw={},
                                  event_type="anomaly", severity="high", description="p95 over threshold",
                                  resource={"type": "service", "id": "chat-api"}, tags={"env": "prod"})
    fields.update(overrides)
    return NewEvent(**fields)


def _ingest(*events: NewEvent) -> list[int]:
    outbox: list[int] = []
    results = ingest_events(list(events), dispatcher=outbox.extend)
    assert all(r.status == "accepted" for r in results)
    return outbox


def _incident(incident_id: str) -> Incident:
    with read_session() as session:
        incident = session.get(Incident, incident_id)
        assert incident is not None
        return incident


def test_stages_are_idempotent(db):
    outbox = _ingest(_new(1), _new(2, title="Latency spike 1 again"))
    assert pipeline.process_outbox(outbox) == 2
    assert pipeline.process_outbox(outbox) == 0  # a redelivered batch finds nothing left to do
    with read_session() as session:
        assert session.scalar(select(func.count(TimelineEntry.id)).where(TimelineEntry.kind == "classified")) == 2
        assert session.scalar(select(func.count(OutboxMessage.id)).where(OutboxMessage.done_at.is_(None))) == 0
    # A stage replayed on its own input, after the batch finished, writes nothing twice.
    batch = pipeline.deduplicate(outbox)
    assert batch["event_ids"] == [] and batch["incidents"] == []


def test_recurrence_after_the_window_is_on_the_timeline(db):
    outbox = _ingest(_new(1))
    pipeline.process_outbox(outbox)
    with unit_of_work() as session:  # the incident went quiet an hour ago
        session.execute(update(Event).values(received_at=datetime.now(timezone.utc) - timedelta(hours=1)))
    outbox = _ingest(_new(2, title="Latency spike 1"))
    pipeline.process_outbox(outbox)
    pipeline.process_outbox(outbox)
    with read_session() as session:
        [incident] = session.scalars(select(Incident)).all()
        entries = list(session.scalars(select(TimelineEntry).where(TimelineEntry.kind == "recurred")))
    assert incident.event_count == 2
    assert len(entries) == 1 and entries[0].incident_id == incident.id
    assert entries[0].details["quiet_secs"] > 900 and entries[0].details["window_secs"] == 900
    # Inside the window: no recurrence entry.
    pipeline.process_outbox(_ingest(_new(3, title="Latency spike 1")))
    with read_session() as session:
        assert session.scalar(select(func.count(TimelineEntry.id)).where(TimelineEntry.kind == "recurred")) == 1


def test_duplicate_active_incidents_are_merged_and_the_loser_points_at_the_survivor(db):
    outbox = _ingest(_new(1))
    pipeline.process_outbox(outbox)
    [survivor] = [i.id for i in _all_incidents()]
    fingerprint = _incident(survivor).fingerprint
    # A duplicate the index would refuse: restored from a backup taken without the partial index.
    with unit_of_work() as session:
        session.execute(text("DROP INDEX uq_incidents_active_fingerprint"))
    try:
        now = datetime.now(timezone.utc)
        with unit_of_work() as session:
            session.add(Incident(id="INC-20990101-00007", title="Latency spike 1", source="llm-sentinel", severity="P1",
                                 status="NEW", fingerprint=fingerprint, first_seen=now, last_seen=now, created_at=now,
                                 event_count=1, tags={}))
            session.add(Event(source="llm-sentinel", event_id="restored-1", incident_id="INC-20990101-00007",
                              fingerprint=fingerprint, title="Latency spike 1", received_at=now, payload={}))
            session.flush()
            restored = session.scalar(select(Event.id).where(Event.event_id == "restored-1"))
            session.add(OutboxMessage(kind="pipeline", payload={"event_ids": [restored]}, created_at=now, attempts=0))
            session.flush()
            outbox_id = session.scalar(select(func.max(OutboxMessage.id)))
        assert pipeline.process_outbox([outbox_id]) == 1
    finally:
        with unit_of_work() as session:
            session.execute(text(
                "CREATE UNIQUE INDEX uq_incidents_active_fingerprint ON incidents (fingerprint) "
                "WHERE status IN ('NEW','ACKNOWLEDGED','IN_PROGRESS','ESCALATED')"))
    loser = _incident("INC-20990101-00007")
    assert loser.merged_into == survivor and loser.status == "CLOSED"
    assert _incident(survivor).event_count == 2
    from app.services.incidents import get_incident

    assert get_incident("INC-20990101-00007")["id"] == survivor
    with read_session() as session:
        assert session.scalar(select(Event.incident_id).where(Event.event_id == "restored-1")) == survivor


def _all_incidents() -> list[Incident]:
    with read_session() as session:
        return list(session.scalars(select(Incident).order_by(Incident.id)))


def test_routing_precedence(db, monkeypatch):
    service_catalog.create_service({"name": "chat-api", "owner_team": "llm-serving", "escalation_policy": "serving"})
    settings = dataclasses.replace(
        get_settings(),
        integrations={"llm-sentinel": IntegrationSettings(name="llm-sentinel", default_team="platform-team"),
                      "llm-shield": IntegrationSettings(name="llm-shield", default_team="security-team",
                                                        escalation_policy="security-oncall")},
        routing_rules=(RoutingRule(name="prod-p0", team="sre", escalation_policy="sev0", severity=("P0",),
                                   tags={"env": "prod"}),),
    )
    monkeypatch.setattr("app.services.pipeline.routing.get_settings", lambda: settings)
    outbox = _ingest(
        _new(1, severity="critical"),                                          # rule: P0 + env=prod
        _new(2),                                                               # catalog owner of chat-api
        _new(3, source="llm-shield", resource={"type": "model", "id": "m"}),  # integration default team
        _new(4, severity="critical", team="manual-team", source="manual"),     # explicit team wins
    )
    pipeline.process_outbox(outbox)
    by_title = {i.title: i for i in _all_incidents()}
    assert (by_title["Latency spike 1"].team, by_title["Latency spike 1"].escalation_policy) == ("sre", "sev0")
    assert (by_title["Latency spike 2"].team, by_title["Latency spike 2"].escalation_policy) == \
        ("llm-serving", "serving")
    assert (by_title["Latency spike 3"].team, by_title["Latency spike 3"].escalation_policy) == \
        ("security-team", "security-oncall")
    assert by_title["Latency spike 4"].team == "manual-team"


@pytest.fixture
def black_hole() -> Any:
    """A TCP port that accepts connections and never answers (a hung Prometheus)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def _enrich_with(monkeypatch: pytest.MonkeyPatch, prometheus_url: str, timeout: float) -> dict[str, Any]:
    service_catalog.create_service({"name": "chat-api", "owner_team": "llm-serving",
                                    "metrics_queries": {"rps": 'sum(rate(x{service="{service}"}[1m]))',
                                                        "errors": 'sum(rate(e{service="{service}"}[1m]))'}})
    base = get_settings()
    settings = dataclasses.replace(base, prometheus_url=prometheus_url,
                                   enrichment=dataclasses.replace(base.enrichment, timeout_secs=timeout))
    outbox = _ingest(_new(1))
    batch = pipeline.enrich(pipeline.classify(pipeline.deduplicate(outbox)), settings)
    started = time.monotonic()
    pipeline.route_and_persist(pipeline.correlate(batch))
    assert time.monotonic() - started < 5
    [incident] = _all_incidents()
    assert incident.processed_at is not None, "enrichment trouble never blocks the incident"
    return incident.enrichment or {}


def test_enrichment_timeout_is_partial(db, monkeypatch, black_hole):
    started = time.monotonic()
    enrichment = _enrich_with(monkeypatch, black_hole, timeout=1.0)
    assert time.monotonic() - started < 8
    assert enrichment["partial"] is True
    assert set(enrichment["errors"]) == {"metrics.rps", "metrics.errors"}
    assert enrichment["service"]["owner_team"] == "llm-serving"  # the other enrichers still answered


def test_enrichment_error_from_prometheus_is_partial(db, monkeypatch, httpserver):
    def answer(request: Request) -> Response:
        if "rate(e{" in request.args["query"]:
            body = {"status": "error", "errorType": "bad_data", "error": "parse error"}
            return Response(json.dumps(body), status=400, content_type="application/json")
        return Response(json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {}, "value": [1, "12.5"]}]}}), content_type="application/json")

    httpserver.expect_request("/api/v1/query").respond_with_handler(answer)
    enrichment = _enrich_with(monkeypatch, httpserver.url_for("/").rstrip("/"), timeout=5.0)
    assert enrichment["partial"] is True
    assert enrichment["metrics"] == {"rps": {"query": 'sum(rate(x{service="chat-api"}[1m]))', "value": 12.5,
                                             "labels": {}}}
    assert "400" in enrichment["errors"]["metrics.errors"]


def test_correlation_respects_max_group_size_and_threshold(db, monkeypatch):
    base = get_settings()
    settings = dataclasses.replace(base, correlation=dataclasses.replace(base.correlation, max_group_size=3))
    monkeypatch.setattr("app.services.pipeline.correlation.get_settings", lambda: settings)
    outbox = _ingest(*[_new(i, title=f"GPU pool exhausted in region {i}") for i in range(5)],
                     _new(9, source="llm-shield", event_type="violation", title="Prompt injection attempt",
                          resource={"type": "model", "id": "gpt"}, tags={"team": "x"}))
    pipeline.process_outbox(outbox)
    with read_session() as session:
        groups = list(session.scalars(select(CorrelationGroup)))
        members = list(session.scalars(select(CorrelationMember)))
    # The first group is full at 3; the overflow opens a second group rooted at the next incident.
    groups.sort(key=lambda g: -g.member_count)
    assert [g.member_count for g in groups] == [3, 2]
    assert len(members) == 5
    unrelated = [i for i in _all_incidents() if i.source == "llm-shield"][0]
    assert unrelated.correlation_group_id is None
    roots = [_incident(g.root_incident_id) for g in groups]
    assert [r.title for r in roots] == ["GPU pool exhausted in region 0", "GPU pool exhausted in region 3"]
    assert [r.correlation_group_id for r in roots] == [g.id for g in groups]
    for group in groups:
        reasons = {r["strategy"] for r in group.reasons}
        assert {"source", "type", "similarity", "tags", "service"} == reasons


def test_a_group_filled_by_another_worker_meanwhile_takes_no_member_over_its_size(db, monkeypatch):
    """The race the size check in memory cannot see: this batch read the group with room left, another
    worker filled it before this batch's write. The write counts again under the group's row lock."""
    from app.services.pipeline.correlation import _persist

    base = get_settings()
    settings = dataclasses.replace(base, correlation=dataclasses.replace(base.correlation, max_group_size=3))
    monkeypatch.setattr("app.services.pipeline.correlation.get_settings", lambda: settings)
    pipeline.process_outbox(_ingest(*[_new(i, title=f"GPU pool exhausted in region {i}") for i in range(3)]))
    pipeline.process_outbox(_ingest(_new(9, source="llm-shield", event_type="violation", title="Prompt injection",
                                         resource={"type": "model", "id": "gpt"}, tags={"team": "x"})))
    with read_session() as session:
        [full] = session.scalars(select(CorrelationGroup)).all()
    late = [i for i in _all_incidents() if i.source == "llm-shield"][0]
    assert full.member_count == 3 and late.correlation_group_id is None
    decision = {"group_id": full.id, "score": 0.9, "reasons": [], "related_to": full.root_incident_id}
    decisions = _persist({late.id: decision}, {}, datetime.now(timezone.utc), max_group_size=3)
    assert decisions == {}
    with read_session() as session:
        assert session.get(CorrelationGroup, full.id).member_count == 3
        assert session.get(CorrelationMember, late.id) is None


def test_the_pipeline_and_analyze_correlations_score_a_pair_alike(db):
    """One scorer: the score the correlate stage gave a member equals the score AnalyzeCorrelations
    computes for the same pair now, reasons included; a neighbour outside the group is scored the same way."""
    from app.services.correlation import analyze_correlations
    from app.services.pipeline.grouping import make_item, score_pair

    service_catalog.create_service({"name": "chat-api", "dependencies": ["vector-db"]})
    outbox = _ingest(_new(1, title="GPU pool exhausted on node 1", service="chat-api", tags={"env": "prod", "az": "a"}),
                     _new(2, title="GPU pool exhausted on node 2", service="chat-api", tags={"env": "prod"}),
                     _new(3, title="Index rebuild slow", service="vector-db", tags={"env": "dev"}, event_type="drift",
                          description="rebuild queue"))
    pipeline.process_outbox(outbox)
    by_title = {i.title: i for i in _all_incidents()}
    first, second = by_title["GPU pool exhausted on node 1"], by_title["GPU pool exhausted on node 2"]
    third = by_title["Index rebuild slow"]
    with read_session() as session:
        member = session.get(CorrelationMember, second.id)
    assert member is not None and member.group_id == first.correlation_group_id

    found = analyze_correlations(first.id)
    scored = {r.incident_id: r for r in found.related}
    assert found.group_id == member.group_id
    assert scored[second.id].score == pytest.approx(member.score, abs=1e-3)
    assert scored[second.id].reasons == ("group", *(r["strategy"] for r in member.reasons))
    # outside the group (below the threshold), scored by the same function: the service dependency counts
    assert third.id in scored and "group" not in scored[third.id].reasons
    catalog = {"chat-api": {"dependencies": ["vector-db"]}}

    def item(i: Incident) -> Any:
        return make_item(i.id, i.source, i.event_type, i.service, i.tags, i.created_at, i.title, i.description,
                         catalog)

    assert scored[third.id].score == pytest.approx(score_pair(item(first), item(third), get_settings().correlation)[0],
                                                   abs=1e-3)
    assert "service" in scored[third.id].reasons
