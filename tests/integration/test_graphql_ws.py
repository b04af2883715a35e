"""GraphQL subscriptions over WebSocket (graphql-transport-ws) against real web processes (gunicorn,
gevent workers), with a real `websockets` client: a P0 created through REST reaches a subscriber on
the process that took the request and one on a second web process; the protocol's refusals and
close codes."""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.integration.test_ws import running_web

PROTOCOL = "graphql-transport-ws"
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")

# reference README, "WebSocket Streaming", verbatim
CRITICAL = """
      subscription {
        criticalIncidents {
          id
          title
          severity
          state
          createdAt
        }
      }
    """

# reference README, "GraphQL API", verbatim
UPDATED = """
# Subscribe to real-time incident updates
subscription IncidentUpdates {
  incidentUpdated(filter: { severity: [P0, P1] }) {
    incident {
      id
      title
      status
    }
    updateType
    changedFields
  }
}
"""


@pytest.fixture(scope="module")
def webs(test_env: dict[str, str]) -> Iterator[tuple[str, str]]:
    with running_web() as first, running_web() as second:
        yield first, second


def ws_url(base: str, path: str = "/graphql/ws") -> str:
    return base.replace("http://", "ws://") + path


def receive(ws: ClientConnection, timeout: float = 30.0) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=timeout))


def open_session(base: str, key: str, path: str = "/graphql/ws") -> ClientConnection:
    ws = connect(ws_url(base, path), subprotocols=[PROTOCOL], open_timeout=30)  # type: ignore[list-item]
    assert ws.subprotocol == PROTOCOL
    ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}}))
    assert receive(ws) == {"type": "connection_ack"}
    return ws


def subscribed(ws: ClientConnection, op_id: str, query: str) -> None:
    """Subscribe, then ping: the pong comes after the server has registered the subscription."""
    ws.send(json.dumps({"id": op_id, "type": "subscribe", "payload": {"query": query}}))
    ws.send(json.dumps({"type": "ping"}))
    assert receive(ws) == {"type": "pong"}


def closed_with(ws: ClientConnection) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(10):
            ws.recv(timeout=30)
    assert info.value.rcvd is not None
    return info.value.rcvd.code, info.value.rcvd.reason


def test_a_p0_created_through_rest_reaches_subscribers_on_both_web_processes(webs, db, make_key):
    first, second = webs
    key = make_key("incident:read", "incident:write")
    here = open_session(first, key)
    there = open_session(second, key, path="/graphql")  # the reference README's subscription URL
    try:
        subscribed(here, "critical", CRITICAL)
        subscribed(there, "critical", CRITICAL)
        subscribed(there, "updates", UPDATED)
        health = httpx.get(f"{second}/health", headers={"X-API-Key": key}, timeout=30).json()
        assert health["graphql_subscriptions"] == {"status": "up", "subscriptions": 2}
        low = httpx.post(f"{first}/api/v1/incidents", headers={"X-API-Key": key}, timeout=30,
                         json={"title": "Slow tokenizer", "severity": "P3", "source": "monitoring"})
        assert low.status_code == 201
        sent = time.monotonic()
        response = httpx.post(f"{first}/api/v1/incidents", headers={"X-API-Key": key}, timeout=30,
                              json={"title": "GPU fleet down", "severity": "P0", "source": "monitoring"})
        assert response.status_code == 201, response.text
        incident = response.json()
        got_here = receive(here)
        waited = time.monotonic() - sent
        assert got_here == {"id": "critical", "type": "next", "payload": {"data": {"criticalIncidents": {
            "id": incident["id"], "title": "GPU fleet down", "severity": "P0", "state": "NEW",
            "createdAt": incident["created_at"]}}}}, f"after {waited:.3f} s"
        seen = {}
        while len(seen) < 2:  # both subscriptions of the second process; the P3 matches neither
            message = receive(there)
            seen[message["id"]] = message["payload"]["data"]
        assert seen["critical"]["criticalIncidents"]["id"] == incident["id"]
        update = seen["updates"]["incidentUpdated"]
        assert update["incident"] == {"id": incident["id"], "title": "GPU fleet down", "status": "NEW"}
        assert update["updateType"] == "CREATED"
        # an acknowledgement through REST is an update with the fields it changed
        acked = httpx.post(f"{first}/api/v1/incidents/{incident['id']}/acknowledge", headers={"X-API-Key": key},
                           json={}, timeout=30)
        assert acked.status_code == 200
        while True:
            message = receive(there)
            if message["id"] == "updates" and message["payload"]["data"]["incidentUpdated"]["updateType"] != "UPDATED":
                break
        update = message["payload"]["data"]["incidentUpdated"]
        assert update["updateType"] == "ACKNOWLEDGED" and update["changedFields"] == ["status"]
        assert update["incident"]["status"] == "ACKNOWLEDGED"
        # complete ends a subscription: the next P0 reaches only the one still open
        there.send(json.dumps({"id": "critical", "type": "complete"}))
        there.send(json.dumps({"type": "ping"}))
        while receive(there).get("type") != "pong":
            pass
        second_p0 = httpx.post(f"{second}/api/v1/incidents", headers={"X-API-Key": key}, timeout=30,
                               json={"title": "Router down", "severity": "P0", "source": "monitoring"}).json()
        message = receive(there)
        while message["payload"]["data"]["incidentUpdated"]["incident"]["id"] != second_p0["id"]:
            message = receive(there)
        assert message["id"] == "updates"
        assert receive(here)["payload"]["data"]["criticalIncidents"]["id"] == second_p0["id"]
    finally:
        here.close()
        there.close()


def test_queries_run_over_the_socket_once(webs, db, make_key):
    ws = open_session(webs[0], make_key("incident:read"))
    try:
        ws.send(json.dumps({"id": "q", "type": "subscribe", "payload": {"query": "{ incidents { totalCount } }"}}))
        assert receive(ws) == {"id": "q", "type": "next", "payload": {"data": {"incidents": {"totalCount": 0}}}}
        assert receive(ws) == {"id": "q", "type": "complete"}
        ws.send(json.dumps({"id": "bad", "type": "subscribe", "payload": {"query": "subscription { nope }"}}))
        error = receive(ws)
        assert error["id"] == "bad" and error["type"] == "error"
        assert "Cannot query field 'nope'" in error["payload"][0]["message"]
    finally:
        ws.close()


def test_the_protocol_refuses_with_its_close_codes(webs, db, make_key):
    base = webs[0]
    key = make_key("incident:read")
    # no credential, a bad one, one without incident:read: 4403 Forbidden
    for payload in ({}, {"Authorization": "Bearer im_nope"}, {"Authorization": f"Bearer {make_key('event:create')}"}):
        ws = connect(ws_url(base), subprotocols=[PROTOCOL], open_timeout=30)  # type: ignore[list-item]
        ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        assert closed_with(ws) == (4403, "Forbidden")
    # subscribe before connection_ack: 4401
    ws = connect(ws_url(base), subprotocols=[PROTOCOL], open_timeout=30)  # type: ignore[list-item]
    ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": CRITICAL}}))
    assert closed_with(ws) == (4401, "Unauthorized")
    # a second connection_init: 4429
    ws = open_session(base, key)
    ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}}))
    assert closed_with(ws) == (4429, "Too many initialisation requests")
    # an id already subscribed: 4409
    ws = open_session(base, key)
    subscribed(ws, "same", CRITICAL)
    ws.send(json.dumps({"id": "same", "type": "subscribe", "payload": {"query": CRITICAL}}))
    assert closed_with(ws) == (4409, "Subscriber for same already exists")
    # not a protocol message: 4400 with the reason
    ws = open_session(base, key)
    ws.send("not json")
    code, reason = closed_with(ws)
    assert code == 4400 and "not JSON" in reason
    # the handshake's credential serves when connection_init carries none (browsers: ?token=)
    ws = connect(ws_url(base) + f"?token={key}", subprotocols=[PROTOCOL], open_timeout=30)  # type: ignore[list-item]
    ws.send(json.dumps({"type": "connection_init"}))
    assert receive(ws) == {"type": "connection_ack"}
    ws.close()
    # without the subprotocol: 4406
    ws = connect(ws_url(base), open_timeout=30)
    assert closed_with(ws)[0] == 4406
