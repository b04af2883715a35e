"""Alert storms (issue 11): concurrent batches about the same incidents, in different orders, are
all answered 2xx with every event stored once; a lost deadlock is re-run, not answered 5xx; only an
unreachable Postgres answers 503 with Retry-After. Real gunicorn, gRPC server, Postgres."""

from __future__ import annotations

import copy
import json
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import grpc
import httpx
import psycopg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, text

from app.adapters.db import read_session
from app.adapters.models import ACTIVE_STATUS_SQL, Event, Incident
from app.services.auth import create_token
from tests.conftest import wait_for
from tests.integration.test_ingest_rest import SENTINEL
from tests.integration.test_ws import edge_event, open_socket, receive, running_web

SENDERS = 4


def storm_events(tag: str, sender: int, batch: int, size: int, fingerprints: int,
                 make: Callable[[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """`size` unique events whose titles cycle over `fingerprints` values shared by every sender,
    shuffled so each batch reaches the incidents in its own order."""
    events = [make(f"{tag}-{sender}-{batch}-{i}", f"Storm {tag} endpoint {i % fingerprints} failing")
              for i in range(size)]
    random.Random(f"{tag}{sender}{batch}").shuffle(events)
    return events


def assert_stored_once_one_incident_each(tag: str, sent: int, fingerprints: int) -> None:
    """Every event stored once; each fingerprint one open incident whose event_count is what was
    sent for it, and every event points at the incident of its fingerprint."""
    with read_session() as session:
        events = session.execute(select(Event.event_id, Event.incident_id, Event.fingerprint)
                                 .where(Event.event_id.like(f"{tag}-%"))).all()
        incidents = session.execute(select(Incident.id, Incident.fingerprint, Incident.event_count)
                                    .where(Incident.title.like(f"Storm {tag} %"))
                                    .where(text(ACTIVE_STATUS_SQL))).all()
    assert len(events) == len({e.event_id for e in events}) == sent
    assert len(incidents) == len({i.fingerprint for i in incidents}) == fingerprints
    assert {i.event_count for i in incidents} == {sent // fingerprints}
    incident_of = {i.fingerprint: i.id for i in incidents}
    assert all(incident_of[e.fingerprint] == e.incident_id for e in events)


@pytest.fixture(scope="module")
def web(test_env: dict[str, str]) -> Iterator[str]:
    with running_web({"WEB_CONCURRENCY": "2"}) as base:
        yield base


def sentinel(event_id: str, title: str) -> dict[str, Any]:
    event = copy.deepcopy(SENTINEL)
    event.update(event_id=event_id, title=title)
    return event


def test_concurrent_overlapping_rest_batches_are_all_accepted(web, make_key):
    """4 senders, batches over the same fingerprints, shuffled: before lock ordering, ~40% of such
    batches answered 500 (DeadlockDetected from the incidents upsert)."""
    key = make_key("event:create")
    batches, size, fingerprints = 4, 300, 300

    def send(sender: int) -> list[tuple[int, int]]:
        answers = []
        with httpx.Client(base_url=web, headers={"X-API-Key": key}, timeout=60) as http:
            for b in range(batches):
                body = {"events": storm_events("rest", sender, b, size, fingerprints, sentinel)}
                response = http.post("/api/v1/events", json=body)
                answers.append((response.status_code, response.json().get("accepted", 0)))
        return answers

    with ThreadPoolExecutor(SENDERS) as pool:
        answers = [a for sender in pool.map(send, range(SENDERS)) for a in sender]
    assert answers == [(202, size)] * (SENDERS * batches)
    assert_stored_once_one_incident_each("rest", SENDERS * batches * size, fingerprints)


def test_concurrent_overlapping_websocket_batches_are_all_acked(web, db):
    url = web.replace("http://", "ws://") + "/ws/events"
    batches, size, fingerprints = 3, 200, 200

    def edge(event_id: str, title: str) -> dict[str, Any]:
        return edge_event(0, event_id=event_id, title=title, resource={"type": "tenant", "id": "tenant-1"})

    def send(sender: int) -> list[str]:
        statuses = []
        with open_socket(url, create_token(f"edge-agent-{sender}", 300)) as ws:
            for b in range(batches):
                events = storm_events("ws", sender, b, size, fingerprints, edge)
                ws.send(json.dumps({"type": "batch", "batch_id": f"b-{sender}-{b}", "compression": "none",
                                    "count": size, "events": events}))
                statuses += [f"{m['type']}:{m.get('status', m.get('code'))}" for m in (receive(ws) for _ in events)]
        return statuses

    with ThreadPoolExecutor(SENDERS) as pool:
        statuses = [s for sender in pool.map(send, range(SENDERS)) for s in sender]
    assert statuses == ["ack:processed"] * (SENDERS * batches * size)
    assert_stored_once_one_incident_each("ws", SENDERS * batches * size, fingerprints)


def test_concurrent_overlapping_grpc_calls_are_all_ok(db, make_key):
    """Two gRPC servers (each groups its concurrent calls into one ingest), 4 clients each, calls
    about the same fingerprints in shuffled orders."""
    import proto
    from api.grpc.server import build_server

    pb2, pb2_grpc = proto.load()
    key = make_key("event:create")
    servers = [build_server(address="127.0.0.1:0") for _ in range(2)]
    for server, _ in servers:
        server.start()
    calls, fingerprints = 60, 30

    def send(client: int) -> list[str]:
        _, port = servers[client % 2]
        events = storm_events("grpc", client, 0, calls, fingerprints, lambda event_id, title: {
            "event_id": event_id, "title": title})
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb2_grpc.IncidentServiceStub(channel)
            return [stub.CreateIncident(pb2.CreateIncidentRequest(
                source="llm-shield", event_type="violation", severity="high", **event),
                metadata=(("x-api-key", key),), timeout=30).status for event in events]

    try:
        with ThreadPoolExecutor(2 * SENDERS) as pool:
            statuses = [s for client in pool.map(send, range(2 * SENDERS)) for s in client]
    finally:
        for server, _ in servers:
            server.stop(grace=None).wait()
    assert set(statuses) == {"accepted"} and len(statuses) == 2 * SENDERS * calls
    assert_stored_once_one_incident_each("grpc", 2 * SENDERS * calls, fingerprints)


def _retries(sqlstate: str) -> float:
    return REGISTRY.get_sample_value("incident_manager_db_retries_total",
                                     {"operation": "ingest", "sqlstate": sqlstate}) or 0.0


def test_a_lost_deadlock_is_retried_and_answered(client, make_key, test_env):
    """Another transaction holds the later incident (in fingerprint order) and then asks for the
    earlier one, which the ingest statement already holds: Postgres aborts one of the two with
    40P01. The other transaction waits 10 s before looking for deadlocks, so the victim is ingest,
    which runs again and answers 202 with every event stored once."""
    key = make_key("event:create")
    headers = {"X-API-Key": key}
    opened = client.post("/api/v1/events", headers=headers, json={"events": [
        sentinel("dl-0", "Deadlock one"), sentinel("dl-1", "Deadlock two")]}).get_json()["results"]
    with read_session() as session:
        by_fp = dict(session.execute(select(Incident.fingerprint, Incident.id)).all())
    first, second = (by_fp[fp] for fp in sorted(by_fp))
    assert {first, second} == {r["incident_id"] for r in opened}
    retried_before = _retries("40P01")

    other = psycopg.connect(test_env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://"))
    try:
        other.execute("SET deadlock_timeout = '10s'")
        other.execute("SELECT 1 FROM incidents WHERE id = %s FOR UPDATE", (second,))
        answer: dict[str, Any] = {}

        def ingest() -> None:
            response = client.post("/api/v1/events", headers=headers, json={"events": [
                sentinel("dl-2", "Deadlock two"), sentinel("dl-3", "Deadlock one")]})
            answer.update(status=response.status_code, body=response.get_json())

        sender = threading.Thread(target=ingest)
        sender.start()
        wait_for(lambda: other.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND wait_event_type = 'Lock'").fetchone()[0] == 1, 10, 0.02, "ingest to wait for the row lock")
        other.execute("UPDATE incidents SET updated_at = now() WHERE id = %s", (first,))  # closes the cycle
        other.commit()
        sender.join(30)
    finally:
        other.close()
    assert answer["status"] == 202, answer
    assert [r["status"] for r in answer["body"]["results"]] == ["accepted", "accepted"]
    assert _retries("40P01") == retried_before + 1
    with read_session() as session:
        counts = dict(session.execute(select(Incident.id, Incident.event_count)).all())
        stored = session.execute(select(Event.event_id)).scalars().all()
    assert counts == {first: 2, second: 2} and sorted(stored) == ["dl-0", "dl-1", "dl-2", "dl-3"]


class TcpProxy:
    """A loopback TCP forwarder to Postgres that the test can cut (the listener and every
    forwarded connection close: the web sees Postgres unreachable) and restore on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.start()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                downstream, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [downstream, upstream]
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        assert self.listener is not None
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        except OSError:
            pass
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.sockets = []


def test_postgres_unreachable_answers_503_with_retry_after_and_recovers(test_env, make_key):
    from sqlalchemy.engine import make_url

    url = make_url(test_env["DATABASE_URL"])
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    through_proxy = url.set(port=proxy.port).render_as_string(hide_password=False)
    key = make_key("event:create")
    try:
        with running_web({"DATABASE_URL": through_proxy}) as base, \
                httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=30) as http:
            first = http.post("/api/v1/events", json=sentinel("outage-0", "Outage test"))
            assert first.status_code == 202  # and the key is now in the web's 10 s cache
            proxy.cut()
            started = time.monotonic()
            refused = http.post("/api/v1/events", json={"events": [sentinel("outage-1", "Outage test")]})
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"] == "5"
            assert refused.json() == {"error": {
                "code": "database_unavailable",
                "message": "the database is unreachable; nothing was stored, send the request again later",
                "details": {"retry_after_secs": 5}}}
            assert time.monotonic() - started < 8  # answered promptly, not after a long pool timeout
            assert http.get("/health/live").status_code == 200
            proxy.start()
            again = wait_for(lambda: (r := http.post("/api/v1/events", json=sentinel("outage-1", "Outage test")))
                             .status_code == 202 and r, 30, 0.2, "ingest to recover once Postgres is back")
            assert again.json()["incident_id"] == first.json()["incident_id"]
    finally:
        proxy.cut()
    with read_session() as session:
        assert sorted(session.execute(select(Event.event_id)).scalars()) == ["outage-0", "outage-1"]
