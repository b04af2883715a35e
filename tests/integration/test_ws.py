"""`/ws/events` against the real web process (gunicorn, the default gevent worker), with a real
`websockets` client doing the guide's handshake (§4)."""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from sqlalchemy import func, select
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from app.adapters.db import read_session
from app.adapters.models import Event, Incident
from app.services.auth import create_token
from tests.conftest import ROOT, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_web(extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """The Procfile's `web` (gunicorn with api.gunicorn_conf) on a free loopback port."""
    port = free_port()
    log_path = Path(os.environ["DATA_DIR"]) / f"web-{port}.log"
    env = {**os.environ, "API_HOST": "127.0.0.1", "API_PORT": str(port), "WEB_CONCURRENCY": "1",
           **(extra_env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "python:api.gunicorn_conf", "api.wsgi:app"],
        cwd=ROOT, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def live() -> bool:
        if process.poll() is not None:
            pytest.fail(f"web exited early:\n{log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"{base}/health/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(live, 30, 0.1, "the web process to answer /health/live")
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def web(test_env: dict[str, str]) -> Iterator[str]:
    with running_web({"WS_MAX_MESSAGE_BYTES": "262144", "WS_IDLE_TIMEOUT_SECS": "3"}) as base:
        yield base


@pytest.fixture
def ws_url(web: str, db: None) -> str:
    return web.replace("http://", "ws://") + "/ws/events"


def edge_event(i: int, **overrides: Any) -> dict[str, Any]:
    """The guide's single event (§4)."""
    event = {
        "event_id": f"edge-2025-{i:06d}", "source": "llm-edge-agent", "timestamp": "2025-11-11T10:40:00Z",
        "event_type": "alert", "category": "availability", "title": f"Rate Limit Exceeded {i}",
        "description": "Tenant exceeded rate limit threshold", "severity": "medium",
        "resource": {"type": "tenant", "id": f"tenant-{i}", "name": "Acme Corp"},
        "metrics": {"current_rpm": 12500, "limit_rpm": 10000, "throttled_requests": 2500},
        "tags": {"environment": "production", "edge_location": "edge-us-east-1-a"},
    }
    event.update(overrides)
    return event


def receive(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=15))


@contextmanager
def open_socket(url: str, token: str | None = None, query: bool = False) -> Iterator[ClientConnection]:
    """Connect as the guide's client does and check the server's connection_ack."""
    token = token or create_token("edge-agent-1", 300)
    target = f"{url}?token={token}" if query else url
    headers = None if query else {"Authorization": f"Bearer {token}"}
    with connect(target, additional_headers=headers, open_timeout=10) as ws:
        ack = receive(ws)
        assert ack["type"] == "connection_ack" and ack["protocol_version"] == "1.0"
        assert ack["session_id"].startswith("sess-") and "batching" in ack["features"]
        yield ws


def counts() -> tuple[int, int]:
    with read_session() as session:
        return (session.scalar(select(func.count()).select_from(Event)) or 0,
                session.scalar(select(func.count()).select_from(Incident)) or 0)


def test_handshake_single_event_and_heartbeat(ws_url):
    with open_socket(ws_url) as ws:
        ws.send(json.dumps({"type": "event", **edge_event(1)}))
        ack = receive(ws)
        assert ack["type"] == "ack" and ack["event_id"] == "edge-2025-000001" and ack["status"] == "processed"
        with read_session() as session:  # acked means committed
            event = session.scalars(select(Event)).one()
            assert event.incident_id == ack["incident_id"]
            assert event.payload["type"] == "event"  # stored exactly as received
        ws.send(json.dumps({"type": "event", **edge_event(1)}))
        again = receive(ws)
        assert (again["status"], again["incident_id"]) == ("duplicate", ack["incident_id"])
        ws.send(json.dumps({"type": "heartbeat", "timestamp": "2025-11-11T10:40:30Z"}))
        assert receive(ws)["type"] == "heartbeat_ack"
    assert counts() == (1, 1)


def test_token_in_query_string(ws_url):
    with open_socket(ws_url, query=True) as ws:
        ws.send(json.dumps({"type": "heartbeat"}))
        assert receive(ws)["type"] == "heartbeat_ack"


def _batch_messages() -> dict[str, Any]:
    events = [edge_event(100 + i) for i in range(87)]
    compressed = gzip.compress(json.dumps(events).encode())
    base = {"type": "batch", "batch_id": "batch-20251111-001", "timestamp": "2025-11-11T10:40:05Z",
            "compression": "gzip", "count": 87}
    return {
        "array": json.dumps({**base, "compression": "none", "events": events}),
        "base64": json.dumps({**base, "events": base64.b64encode(compressed).decode()}),
        # JSON.stringify(batch) with events = pako.gzip(...): a Uint8Array becomes {"0": 31, "1": 139, ...}
        "pako": json.dumps({**base, "events": {str(i): b for i, b in enumerate(compressed)}}),
        "binary": gzip.compress(json.dumps({**base, "events": events}).encode()),
    }


@pytest.mark.parametrize("encoding", ["array", "base64", "pako", "binary"])
def test_batch_of_87_events_in_each_encoding(ws_url, encoding):
    with open_socket(ws_url) as ws:
        ws.send(_batch_messages()[encoding])
        acks = [receive(ws) for _ in range(87)]
    assert [a["type"] for a in acks] == ["ack"] * 87
    assert [a["event_id"] for a in acks] == [f"edge-2025-{100 + i:06d}" for i in range(87)]
    assert {a["status"] for a in acks} == {"processed"}
    assert counts() == (87, 87)


def test_bad_frames_get_error_codes_and_the_connection_stays_open(ws_url):
    with open_socket(ws_url) as ws:
        for frame, code in [
            ("{not json", "malformed_json"),
            ('{"type": "subscribe"}', "unknown_type"),
            ('{"type": "batch", "events": "%%%"}', "bad_compression"),
            (json.dumps({"type": "batch", "events": [edge_event(1)], "count": 5}), "count_mismatch"),
            (json.dumps({"type": "event", "event_id": "x"}), "invalid_event"),
            ("x" * 300_000, "message_too_large"),
        ]:
            ws.send(frame)
            error = receive(ws)
            assert (error["type"], error["code"]) == ("error", code), frame[:80]
            assert error["message"]
        assert counts() == (0, 0)
        # One bad event in a batch: the others are acked, the bad one gets an error.
        ws.send(json.dumps({"type": "batch", "events": [edge_event(7), {"event_id": "bad-1", "title": "no severity"}]}))
        replies = [receive(ws), receive(ws)]
        error = next(r for r in replies if r["type"] == "error")
        ack = next(r for r in replies if r["type"] == "ack")
        assert error["code"] == "invalid_event" and error["event_id"] == "bad-1" and "severity" in error["details"]
        assert ack["event_id"] == "edge-2025-000007"
    assert counts() == (1, 1)


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    ({"Authorization": "Bearer not-a-token"}, 401),
])
def test_no_or_bad_token_is_refused_before_the_upgrade(ws_url, headers, status):
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url, additional_headers=headers, open_timeout=10)
    assert info.value.response.status_code == status
    assert json.loads(info.value.response.body)["error"]["code"] == "unauthenticated"


def test_expired_token_is_refused(ws_url):
    import jwt as pyjwt

    expired = pyjwt.encode({"sub": "edge", "exp": 1}, os.environ["JWT_SECRET"], algorithm="HS256")
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url, additional_headers={"Authorization": f"Bearer {expired}"}, open_timeout=10)
    assert info.value.response.status_code == 401


def test_idle_connection_is_closed(ws_url):
    with open_socket(ws_url) as ws:
        error = receive(ws)  # WS_IDLE_TIMEOUT_SECS=3 in this module
        assert (error["type"], error["code"]) == ("error", "idle_timeout")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 1000


def test_a_message_far_over_the_limit_closes_with_1009(ws_url):
    with open_socket(ws_url) as ws:
        ws.send("x" * (4 * 262144 + 1))  # 4 x WS_MAX_MESSAGE_BYTES: never buffered
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 1009
    assert counts() == (0, 0)


def test_many_concurrent_connections_on_one_worker(ws_url):
    """One gunicorn worker (gevent) holds 60 agents at once; each one's event is acked."""
    import asyncio

    from websockets.asyncio.client import connect as aconnect

    async def agent(i: int) -> dict[str, Any]:
        token = create_token(f"edge-agent-{i}", 60)
        async with aconnect(ws_url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=20) as ws:
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await asyncio.sleep(0.5)  # all connected at the same time
            await ws.send(json.dumps({"type": "event", **edge_event(5000 + i)}))
            return json.loads(await asyncio.wait_for(ws.recv(), 20))

    async def main() -> list[dict[str, Any]]:
        return await asyncio.gather(*(agent(i) for i in range(60)))

    acks = asyncio.run(main())
    assert {a["type"] for a in acks} == {"ack"} and len({a["event_id"] for a in acks}) == 60
    assert counts() == (60, 60)
