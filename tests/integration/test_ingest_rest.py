"""REST ingest per CONTRACT.md: the Sentinel request of guide §2 verbatim, duplicates, batches."""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from app.adapters.db import read_session
from app.adapters.models import Event, Incident, OutboxMessage, TimelineEntry

SENTINEL_TEXT = (Path(__file__).parent.parent / "fixtures" / "sentinel-event.json").read_text()
SENTINEL = json.loads(SENTINEL_TEXT)
ID_RE = re.compile(r"^INC-(\d{8})-(\d{5,})$")


def counts() -> dict[str, int]:
    with read_session() as session:
        return {table: session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in ("events", "incidents", "incident_timeline", "outbox")}


def event(event_id: str, **changes):  # type: ignore[no-untyped-def]
    body = copy.deepcopy(SENTINEL)
    body["event_id"] = event_id
    body.update(changes)
    return body


@pytest.fixture
def key(make_key):  # type: ignore[no-untyped-def]
    return make_key("event:create", "incident:read")


def post(client, path, body, key, **kw):  # type: ignore[no-untyped-def]
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    return client.post(path, data=body, headers={"X-API-Key": key, "Content-Type": "application/json"}, **kw)


def test_sentinel_request_verbatim_is_accepted_with_the_exact_response(client, key):
    response = client.post("/api/v1/events/sentinel", data=SENTINEL_TEXT,
                           headers={"Content-Type": "application/json", "X-API-Key": key})
    assert response.status_code == 202
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert list(body) == ["status", "event_id", "incident_id", "message", "links"]
    assert body["status"] == "accepted"
    assert body["event_id"] == "sent-2025-001234"
    assert body["message"] == "Event received and queued for processing"
    match = ID_RE.match(body["incident_id"])
    assert match and match.group(1) == datetime.now(timezone.utc).strftime("%Y%m%d")
    incident_id = body["incident_id"]
    assert body["links"] == {"incident": f"http://localhost/incidents/{incident_id}",
                             "api": f"http://localhost/api/v1/incidents/{incident_id}"}

    # durable before the answer: every row is there, with the raw payload kept exactly
    assert counts() == {"events": 1, "incidents": 1, "incident_timeline": 1, "outbox": 1}
    with read_session() as session:
        stored = session.scalars(select(Event)).one()
        outbox = session.scalars(select(OutboxMessage)).one()
        incident = session.get(Incident, incident_id)
        timeline = session.scalars(select(TimelineEntry)).one()
    assert stored.payload == SENTINEL and stored.incident_id == incident_id
    assert (stored.source, stored.event_id, stored.severity) == ("llm-sentinel", "sent-2025-001234", "high")
    assert stored.occurred_at == datetime(2025, 11, 11, 10, 30, tzinfo=timezone.utc)
    assert outbox.payload == {"event_ids": [stored.id]} and outbox.done_at is None
    assert (incident.severity, incident.source_severity, incident.status) == ("P1", "high", "NEW")
    assert (incident.category, incident.event_type, incident.event_count) == ("performance", "anomaly", 1)
    assert incident.title == "Latency Spike Detected" and incident.tags["cluster"] == "prod-us-west-2-a"
    assert incident.resource["id"] == "ep-chat-completion" and incident.metrics["p95_latency_ms"] == 5400
    assert incident.sla_resolve_by == incident.created_at + (incident.sla_resolve_by - incident.created_at)
    assert (incident.sla_resolve_by - incident.created_at).total_seconds() == 3600  # P1
    assert (timeline.kind, timeline.new_value, timeline.actor) == ("created", "NEW", "llm-sentinel")

    # the id is final: both links answer
    for link in body["links"].values():
        got = client.get(link.replace("http://localhost", ""), headers={"X-API-Key": key})
        assert got.status_code == 200 and got.get_json()["id"] == incident_id


def test_public_base_url_is_honoured(client, key, monkeypatch):
    from app.config import reset_settings_cache

    monkeypatch.setenv("PUBLIC_BASE_URL", "https://incidents.example.com/")
    reset_settings_cache()
    try:
        body = post(client, "/api/v1/events/sentinel", SENTINEL, key).get_json()
    finally:
        monkeypatch.delenv("PUBLIC_BASE_URL")
        reset_settings_cache()
    incident_id = body["incident_id"]
    assert body["links"] == {"incident": f"https://incidents.example.com/incidents/{incident_id}",
                             "api": f"https://incidents.example.com/api/v1/incidents/{incident_id}"}


def test_links_follow_the_request_host_by_default(client, key):
    response = client.post("/api/v1/events/sentinel", data=SENTINEL_TEXT, base_url="http://im.internal:8080",
                           headers={"Content-Type": "application/json", "X-API-Key": key})
    assert response.get_json()["links"]["api"].startswith("http://im.internal:8080/api/v1/incidents/INC-")


def test_repeat_answers_duplicate_with_the_same_incident_and_changes_nothing(client, key):
    first = post(client, "/api/v1/events/sentinel", SENTINEL, key).get_json()
    before = counts()
    with read_session() as session:
        incident_before = session.get(Incident, first["incident_id"])
    # the same (source, event_id), even with a different body, is a duplicate
    for body in (SENTINEL, event("sent-2025-001234", title="Something else", severity="critical")):
        response = post(client, "/api/v1/events/sentinel", body, key)
        assert response.status_code == 200
        again = response.get_json()
        assert again["status"] == "duplicate"
        assert again["incident_id"] == first["incident_id"] and again["event_id"] == "sent-2025-001234"
        assert again["links"] == first["links"]
    assert counts() == before
    with read_session() as session:
        incident_after = session.get(Incident, first["incident_id"])
        stored = session.scalars(select(Event)).one()
    assert incident_after.event_count == incident_before.event_count == 1
    assert incident_after.updated_at == incident_before.updated_at
    assert stored.payload == SENTINEL


def test_same_fingerprint_joins_the_active_incident(client, key):
    first = post(client, "/api/v1/events/sentinel", event("e-1"), key).get_json()
    second = post(client, "/api/v1/events/sentinel", event("e-2"), key)
    assert second.status_code == 202 and second.get_json()["status"] == "accepted"
    assert second.get_json()["incident_id"] == first["incident_id"]
    with read_session() as session:
        incident = session.get(Incident, first["incident_id"])
        kinds = [t.kind for t in session.scalars(select(TimelineEntry).order_by(TimelineEntry.id))]
    assert incident.event_count == 2
    assert kinds == ["created", "event_merged"]
    assert counts() == {"events": 2, "incidents": 1, "incident_timeline": 2, "outbox": 2}
    # a different title is another incident
    third = post(client, "/api/v1/events/sentinel", event("e-3", title="Error Rate Spike"), key).get_json()
    assert third["incident_id"] != first["incident_id"]


def test_resolved_incident_is_not_joined(client, key, make_key):
    writer = make_key("incident:write")
    first = post(client, "/api/v1/events/sentinel", event("r-1"), key).get_json()
    assert post(client, f"/api/v1/incidents/{first['incident_id']}/resolve", {}, writer).status_code == 200
    second = post(client, "/api/v1/events/sentinel", event("r-2"), key).get_json()
    assert second["incident_id"] != first["incident_id"]


def test_generic_endpoint_single_event_any_source(client, key):
    response = post(client, "/api/v1/events", event("g-1", source="llm-shield", severity="critical"), key)
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "accepted" and ID_RE.match(body["incident_id"])
    with read_session() as session:
        incident = session.get(Incident, body["incident_id"])
    assert (incident.source, incident.severity) == ("llm-shield", "P0")


def test_sentinel_endpoint_defaults_the_source(client, key):
    body = event("s-1")
    del body["source"]
    response = post(client, "/api/v1/events/sentinel", body, key)
    assert response.status_code == 202
    with read_session() as session:
        assert session.scalars(select(Event.source)).one() == "llm-sentinel"


def test_incident_ids_are_sequential_within_the_day(client, key):
    ids = [post(client, "/api/v1/events", event(f"n-{i}", title=f"Distinct {i}"), key).get_json()["incident_id"]
           for i in range(3)]
    numbers = [int(ID_RE.match(i).group(2)) for i in ids]
    assert numbers == sorted(numbers) and len(set(numbers)) == 3


def test_batch_answers_one_result_per_event_in_order(client, key):
    post(client, "/api/v1/events", event("b-stored"), key)  # stored before the batch
    before = counts()
    batch = [
        event("b-1", title="Batch A"),
        {"event_id": "b-bad", "source": "llm-sentinel"},             # no title, no severity
        event("b-stored"),                                           # duplicate of a stored event
        event("b-2", title="Batch B"),
        event("b-1", title="Batch A"),                               # repeated inside the batch
        "not an object",
        event("b-3", title="Batch A"),                               # same fingerprint as b-1
        event("b-4", title="Batch C", timestamp="yesterday"),        # bad timestamp
    ]
    response = post(client, "/api/v1/events", {"events": batch}, key)
    assert response.status_code == 202
    body = response.get_json()
    results = body["results"]
    assert [r["status"] for r in results] == [
        "accepted", "rejected", "duplicate", "accepted", "duplicate", "rejected", "accepted", "rejected"]
    assert [r["event_id"] for r in results] == ["b-1", "b-bad", "b-stored", "b-2", "b-1", "", "b-3", "b-4"]
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (3, 2, 3)
    assert set(results[1]["error"]) == {"title", "severity"}
    assert results[5]["error"] == {"_schema": ["expected a JSON object"]}
    assert set(results[7]["error"]) == {"timestamp"}
    assert "incident_id" not in results[1]
    assert results[4]["incident_id"] == results[0]["incident_id"] == results[6]["incident_id"]
    assert results[3]["incident_id"] != results[0]["incident_id"]
    assert results[0]["links"]["api"].endswith(results[0]["incident_id"])
    after = counts()
    assert after["events"] - before["events"] == 3
    assert after["incidents"] - before["incidents"] == 2
    assert after["outbox"] - before["outbox"] == 1  # one outbox row for the whole batch
    with read_session() as session:
        assert session.get(Incident, results[0]["incident_id"]).event_count == 2


def test_batch_of_1000_is_accepted_and_1001_is_refused(client, key):
    events = [event(f"k-{i}", title=f"Bulk {i % 10}") for i in range(1000)]
    response = post(client, "/api/v1/events", {"events": events}, key)
    assert response.status_code == 202
    body = response.get_json()
    assert body["accepted"] == 1000 and len(body["results"]) == 1000
    assert [r["event_id"] for r in body["results"]] == [f"k-{i}" for i in range(1000)]
    assert len({r["incident_id"] for r in body["results"]}) == 10
    before = counts()
    assert before["events"] == 1000 and before["incidents"] == 10

    too_many = [event(f"x-{i}", title=f"Bulk {i}") for i in range(1001)]
    response = post(client, "/api/v1/events", {"events": too_many}, key)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "validation_failed" and "events" in error["details"]
    assert counts() == before


@pytest.mark.parametrize("events", [[], {"a": 1}, "x", None])
def test_batch_must_be_a_non_empty_list(client, key, events):
    response = post(client, "/api/v1/events", {"events": events}, key)
    assert response.status_code == 422
    assert "events" in response.get_json()["error"]["details"]
    assert counts() == {"events": 0, "incidents": 0, "incident_timeline": 0, "outbox": 0}


def test_batch_where_every_event_is_rejected_writes_nothing(client, key):
    response = post(client, "/api/v1/events", {"events": [{"event_id": "a"}, {"title": "t"}]}, key)
    assert response.status_code == 202
    assert [r["status"] for r in response.get_json()["results"]] == ["rejected", "rejected"]
    assert counts() == {"events": 0, "incidents": 0, "incident_timeline": 0, "outbox": 0}


def test_batch_with_a_stored_duplicate_accepts_the_rest_exactly_once(client, key):
    """A stored duplicate fails the writer's statement (nothing written) and the writer names it;
    the batch is planned again without it, and the rest is accepted exactly once."""
    post(client, "/api/v1/events", event("d-1", title="Dup A"), key)
    body = post(client, "/api/v1/events", {"events": [event("d-0", title="Dup Z"), event("d-1", title="Dup A"),
                                                      event("d-2", title="Dup A")]}, key).get_json()
    assert [r["status"] for r in body["results"]] == ["accepted", "duplicate", "accepted"]
    assert body["results"][1]["incident_id"] == body["results"][2]["incident_id"]
    with read_session() as session:
        assert session.get(Incident, body["results"][2]["incident_id"]).event_count == 2
        assert session.execute(select(func.count(Event.id))).scalar_one() == 3


def test_per_integration_severity_mapping_applies_at_ingest(client, key, tmp_path, monkeypatch):
    from app.config import reset_settings_cache

    config = tmp_path / "config.yaml"
    config.write_text("integrations:\n  llm-sentinel:\n    severity_mapping:\n      high: P0\n")
    monkeypatch.setenv("CONFIG_FILE", str(config))
    reset_settings_cache()
    try:
        body = post(client, "/api/v1/events/sentinel", event("m-1"), key).get_json()
        other = post(client, "/api/v1/events", event("m-2", source="llm-shield", title="Other"), key).get_json()
    finally:
        monkeypatch.delenv("CONFIG_FILE")
        reset_settings_cache()
    with read_session() as session:
        assert session.get(Incident, body["incident_id"]).severity == "P0"
        assert session.get(Incident, other["incident_id"]).severity == "P1"


@pytest.mark.parametrize("given,expected", [("warning", "P2"), ("error", "P1"), ("whatever", "P3"), ("P4", "P4")])
def test_source_severity_mapping_at_ingest(client, key, given, expected):
    body = post(client, "/api/v1/events", event(f"sev-{given}", severity=given), key).get_json()
    incident = client.get(f"/api/v1/incidents/{body['incident_id']}", headers={"X-API-Key": key}).get_json()
    assert (incident["severity"], incident["source_severity"]) == (expected, given)


def test_opened_incidents_are_announced_on_the_change_bus(client, key, test_env):
    import time

    import redis as redis_lib

    from app.services.changes import channel

    pubsub = redis_lib.Redis.from_url(test_env["REDIS_URL"]).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel())
    try:
        pubsub.get_message(timeout=1)
        body = post(client, "/api/v1/events/sentinel", event("bus-1", title="Bus announcement"), key).get_json()
        post(client, "/api/v1/events/sentinel", event("bus-2", title="Bus announcement"), key)  # joins: no news
        ours = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.2)
            if message and json.loads(message["data"])["incident"].get("title") == "Bus announcement":
                ours.append(json.loads(message["data"]))
        assert len(ours) == 1
        announced = ours[0]
        assert announced["kind"] == "incident_created" and announced["changes"] == []
        assert announced["incident"]["id"] == body["incident_id"]
        assert announced["incident"]["severity"] == "P1" and announced["incident"]["status"] == "NEW"
    finally:
        pubsub.close()


def test_concurrent_single_events_each_get_their_own_durable_answer(app, key):
    """Single-event requests arriving together share group commits: each still gets its own
    answer after commit, opened incidents stay distinct, repeats of one fingerprint join one
    incident, and a duplicate among them is answered as such without failing the others."""
    from concurrent.futures import ThreadPoolExecutor

    stored = post(app.test_client(), "/api/v1/events/sentinel", event("group-dup"), key)
    assert stored.status_code == 202
    bodies = [event(f"group-{i}", title=f"Group commit {i % 10}") for i in range(40)] + [event("group-dup")]

    def send(body):  # type: ignore[no-untyped-def]
        return post(app.test_client(), "/api/v1/events/sentinel", body, key)

    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(send, bodies))
    answers = [r.get_json() for r in responses]
    assert [r.status_code for r in responses] == [202] * 40 + [200]
    assert answers[-1]["status"] == "duplicate"
    assert answers[-1]["incident_id"] == stored.get_json()["incident_id"]
    by_title: dict[str, set[str]] = {}
    for body, answer in zip(bodies[:40], answers[:40], strict=True):
        assert answer["event_id"] == body["event_id"] and answer["status"] == "accepted"
        by_title.setdefault(body["title"], set()).add(answer["incident_id"])
    assert all(len(ids) == 1 for ids in by_title.values())
    assert len({next(iter(ids)) for ids in by_title.values()}) == 10
    with read_session() as session:
        rows = dict(session.execute(select(Event.event_id, Event.incident_id)
                                    .where(Event.event_id.like("group-%"))).all())
        counts_by_incident = dict(session.execute(
            select(Incident.id, Incident.event_count).where(Incident.title.like("Group commit %"))).all())
    assert rows == {a["event_id"]: a["incident_id"] for a in answers[:40]} | {"group-dup": answers[-1]["incident_id"]}
    assert sorted(counts_by_incident.values()) == [4] * 10


@pytest.fixture
def small_pool(monkeypatch):  # type: ignore[no-untyped-def]
    """This process's autocommit pool replaced by one of 2 connections for the test."""
    from app.adapters import db as db_adapter
    from app.config import reset_settings_cache

    monkeypatch.setenv("DATABASE_POOL_SIZE", "2")
    reset_settings_cache()
    monkeypatch.setattr(db_adapter, "_pool", None)
    yield db_adapter
    if db_adapter._pool is not None:
        db_adapter._pool.close()
    monkeypatch.delenv("DATABASE_POOL_SIZE")
    reset_settings_cache()


def test_autocommit_pool_holds_at_most_pool_size_connections_and_a_busy_pool_waits(db, small_pool):
    """A gevent worker may serve thousands of requests at once: one-statement writers use at most
    `database_pool_size` Postgres connections per process. One more waits, past the point where
    it checks that Postgres is reachable (it is: so it keeps waiting, no error), and the wait is
    measured."""
    import threading
    from contextlib import ExitStack

    from prometheus_client import REGISTRY

    def waits() -> float:  # seconds waited in all
        return REGISTRY.get_sample_value("incident_manager_db_connection_wait_seconds_sum",
                                         {"pool": "autocommit"}) or 0.0

    waited_before = waits()
    got: list[int] = []
    with ExitStack() as held:
        a = held.enter_context(small_pool.autocommit_connection("test"))
        b = held.enter_context(small_pool.autocommit_connection("test"))
        assert a is not b

        def third() -> None:
            with small_pool.autocommit_connection("test") as conn:
                got.append(conn.execute("SELECT 7").fetchone()[0])

        thread = threading.Thread(target=third)
        thread.start()
        thread.join(small_pool.PROBE_AFTER_SECS + 0.5)
        assert thread.is_alive() and got == []  # both connections are taken: it waits, even past the probe
    thread.join(10)
    assert got == [7]
    assert waits() >= waited_before + small_pool.PROBE_AFTER_SECS + 0.5
    assert small_pool._pool.get_stats()["pool_size"] <= 2


def test_batches_beyond_the_connection_bound_are_all_accepted(app, key, small_pool):
    """More concurrent batch requests than connections: they queue for one, none fails."""
    from concurrent.futures import ThreadPoolExecutor

    def send(n: int):  # type: ignore[no-untyped-def]
        batch = {"events": [event(f"bound-{n}-{i}", title=f"Bound {n}-{i}") for i in range(50)]}
        return post(app.test_client(), "/api/v1/events", batch, key)

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(send, range(8)))
    assert [(r.status_code, r.get_json()["accepted"]) for r in responses] == [(202, 50)] * 8
    assert small_pool._pool.get_stats()["pool_size"] <= 2
    assert counts()["events"] == 400


@pytest.mark.parametrize("path", ["one statement", "stored duplicate"])
def test_auto_page_is_written_with_the_incident_it_pages(client, key, tmp_path, monkeypatch, path):
    """`routing.auto_page`: an incident the integration opens at P0/P1 is due for paging at once,
    in the same commit as the incident, also when the batch is planned again around a stored
    duplicate. An event joining it, and a low-severity incident, page nothing."""
    from app.config import reset_settings_cache

    if path == "stored duplicate":  # the first statement names it; the second writes the batch
        stored = post(client, "/api/v1/events", event("page-dup", source="llm-shield", title="Dup"), key)
        assert stored.status_code == 202
    config = tmp_path / "config.yaml"
    config.write_text("integrations:\n  llm-shield:\n    routing:\n      default_team: security-team\n"
                      "      escalation_policy: security-critical\n      auto_page: true\n")
    monkeypatch.setenv("CONFIG_FILE", str(config))
    reset_settings_cache()
    shield = {"source": "llm-shield", "title": "Prompt injection", "severity": "critical"}
    try:
        batch = [event("page-1", **shield), event("page-2", **shield),
                 event("page-low", source="llm-shield", title="Odd prompt", severity="low"),
                 event("page-other", title="Not Shield", severity="critical")]
        if path == "stored duplicate":
            batch.append(event("page-dup", source="llm-shield", title="Dup"))
        answer = post(client, "/api/v1/events", {"events": batch}, key).get_json()
        joined = post(client, "/api/v1/events", event("page-3", **shield), key).get_json()
    finally:
        monkeypatch.delenv("CONFIG_FILE")
        reset_settings_cache()
    ids = [r["incident_id"] for r in answer["results"]]
    assert answer["accepted"] == 4 and ids[0] == ids[1] == joined["incident_id"]
    with read_session() as session:
        incidents = {i: session.get(Incident, i) for i in ids[:4]}
        timeline = session.execute(select(TimelineEntry.incident_id, TimelineEntry.kind, TimelineEntry.new_value,
                                          TimelineEntry.details)
                                   .where(TimelineEntry.incident_id.in_(ids[:4]))
                                   .order_by(TimelineEntry.at, TimelineEntry.id)).all()
    paged = incidents[ids[0]]
    assert paged.severity == "P0" and paged.next_escalation_at is not None
    assert paged.next_escalation_at == paged.created_at
    assert incidents[ids[2]].next_escalation_at is None and incidents[ids[3]].next_escalation_at is None
    pages = [row for row in timeline if row.kind == "auto_page"]
    assert [(row.incident_id, row.details) for row in pages] == [
        (ids[0], {"escalation_policy": "security-critical", "team": "security-team"})]
    assert datetime.fromisoformat(pages[0].new_value) == paged.next_escalation_at
    assert [row.kind for row in timeline if row.incident_id == ids[0]] == ["created", "auto_page", "event_merged"]
