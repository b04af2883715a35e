"""`/ws/events`: the edge agents' WebSocket door (integration guide §4, CONTRACT decision 7).

Handshake: a JWT (or API key) in `Authorization: Bearer` or `?token=`; refused with a plain HTTP 401/403
before the upgrade. The server sends `connection_ack`; the client sends `event`, `batch` and
`heartbeat` messages. Every event gets an `ack` (event_id, incident_id, status processed|duplicate)
once committed; a bad frame or event gets an `error` (code, message, details) and the connection
stays open. Messages over WS_MAX_MESSAGE_BYTES are answered with an error; over four times that the
connection is closed with 1009 (the frame is never buffered). No message for WS_IDLE_TIMEOUT_SECS
(heartbeats count) closes the connection with 1000 after an `idle_timeout` error.

Connections are served by gunicorn's gevent worker (api/gunicorn_conf.py): a connection is a
greenlet, not a thread, so thousands of idle edge agents cost little memory (docs/doors.md).
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
import uuid
from typing import Any, Mapping, Sequence

import orjson
from flask import Flask, Response, request
from prometheus_client import Counter, Gauge
from simple_websocket import ConnectionClosed, Server
from wsproto.events import TextMessage

from api.auth import enforce
from api.errors import error_response
from api.schemas import RejectedEvent, validate_events
from api.ws_codec import WsFrame, decode_ws_frame
from app.config import Settings, get_settings
from app.domain.times import now_iso
from app.services.auth import AuthError, PermissionDenied, Principal, authenticate_bearer
from app.services.ingest import NewEvent, ingest_events
from app.services.payloads import InvalidPayload

log = logging.getLogger(__name__)

EDGE_AGENT_SOURCE = "llm-edge-agent"  # the source of an event that names none
PROTOCOL_VERSION = "1.0"
FEATURES = ["batching", "compression", "heartbeat", "acks"]
HARD_LIMIT_FACTOR = 4

WS_CONNECTIONS = Gauge("incident_manager_ws_connections", "Open /ws/events connections", multiprocess_mode="livesum")
WS_MESSAGES = Counter("incident_manager_ws_messages_total", "WebSocket client messages", ["type", "outcome"])
WS_EVENTS = Counter("incident_manager_ws_events_total", "Events received over WebSocket", ["status"])


def _handshake_principal() -> Principal:
    authorization = request.headers.get("Authorization", "")
    scheme, _, value = authorization.partition(" ")
    token = value.strip() if scheme.lower() == "bearer" else ""
    token = token or (request.args.get("token") or "").strip()
    if not token:
        raise AuthError("missing token: send Authorization: Bearer <JWT> or ?token=<JWT>")
    principal = authenticate_bearer(token)
    enforce(principal, "event:create")
    return principal


def _text(message: Mapping[str, Any]) -> str:
    """A frame's JSON text: orjson (non-JSON values as str(), integer keys of error details as
    strings), json for what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(message, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(message, default=str)


class EventSocket:
    """One connection. The reader decodes and validates frames while the committer stores the
    previous ones (a queue of PIPELINE_DEPTH frames between them), so a batch's database round trips
    overlap the next batch's parsing; acks are sent by the committer, after commit, in order."""

    PIPELINE_DEPTH = 2

    def __init__(self, ws: Server, principal: Principal, settings: Settings) -> None:
        from tasks.dispatch import dispatch_pipeline

        self.ws = ws
        self.principal = principal
        self.settings = settings
        self.dispatcher = dispatch_pipeline
        self.session_id = f"sess-{uuid.uuid4().hex[:12]}"
        self._send_lock = threading.Lock()
        self._frames: queue.Queue[tuple[WsFrame, list[NewEvent], list[RejectedEvent]] | None] = queue.Queue(
            self.PIPELINE_DEPTH)
        self._committer: threading.Thread | None = None  # started by the first event: idle agents cost less

    def send(self, message: Mapping[str, Any]) -> None:
        data = _text(message)
        with self._send_lock:
            self.ws.send(data)

    def send_many(self, messages: Sequence[Mapping[str, Any]]) -> None:
        """Several text messages in one socket write (a batch's acks: one syscall, not hundreds).
        Frames are built by the connection's own wsproto state, under the same lock as `send`."""
        with self._send_lock:
            if not self.ws.connected:
                raise ConnectionClosed(self.ws.close_reason, self.ws.close_message)
            data = b"".join(self.ws.ws.send(TextMessage(data=_text(m))) for m in messages)
            self.ws.sock.sendall(data)

    def error(self, code: str, message: str, details: Any = None, **extra: Any) -> None:
        self.send({"type": "error", "code": code, "message": message, "details": details or {}, **extra})

    def run(self) -> None:
        self.send({"type": "connection_ack", "session_id": self.session_id, "protocol_version": PROTOCOL_VERSION,
                   "features": FEATURES})
        log.info("ws connected", extra={"session_id": self.session_id, "principal": self.principal.name})
        try:
            while True:
                data = self.ws.receive(timeout=self.settings.ws_idle_timeout_secs)
                if data is None:
                    self._drain()
                    self.error("idle_timeout", f"no message for {self.settings.ws_idle_timeout_secs} s; closing")
                    self.ws.close(1000, "idle timeout")
                    return
                self.handle(data)
        finally:
            self._drain()

    def _drain(self) -> None:
        """Let the committer finish what it holds (acks of committed events go out), then stop it."""
        if self._committer is not None and self._committer.is_alive():
            self._frames.put(None)
            self._committer.join(timeout=30)
        self._committer = None

    def handle(self, data: bytes | str) -> None:
        if len(data) > self.settings.ws_max_message_bytes:
            WS_MESSAGES.labels("unknown", "too_large").inc()
            self.error("message_too_large", f"a message holds at most {self.settings.ws_max_message_bytes} bytes",
                       {"max_bytes": self.settings.ws_max_message_bytes, "received_bytes": len(data)})
            return
        try:
            frame = decode_ws_frame(data, self.settings)
        except InvalidPayload as exc:
            WS_MESSAGES.labels("unknown", exc.code).inc()
            self.error(exc.code, exc.message, exc.details)
            return
        if frame.type == "heartbeat":
            WS_MESSAGES.labels("heartbeat", "ok").inc()
            self.send({"type": "heartbeat_ack", "timestamp": now_iso(), "session_id": self.session_id})
            return
        valid, _, rejected = validate_events(frame.events, default_source=EDGE_AGENT_SOURCE, nul_free=frame.nul_free)
        if self._committer is None:
            self._committer = threading.Thread(target=self._commit_frames, name=f"ws-commit-{self.session_id}",
                                               daemon=True)
            self._committer.start()
        self._frames.put((frame, valid, rejected))

    def _commit_frames(self) -> None:
        while True:
            item = self._frames.get()
            if item is None:
                return
            try:
                self.ingest(*item)
            except ConnectionClosed:
                # The client left: what was committed stays committed; it re-sends what it never saw acked.
                continue
            except Exception:  # keep draining, or the reader would block on a full queue
                log.exception("ws frame handling failed", extra={"session_id": self.session_id})

    def ingest(self, frame: WsFrame, valid: list[NewEvent], rejected: list[RejectedEvent]) -> None:
        started = time.perf_counter()
        for bad in rejected:
            WS_EVENTS.labels("rejected").inc()
            self.error("invalid_event", "the event does not match the schema", bad.errors, event_id=bad.event_id,
                       batch_id=frame.batch_id)
        if not valid:
            WS_MESSAGES.labels(frame.type, "rejected").inc()
            return
        try:
            results = ingest_events(valid, dispatcher=self.dispatcher, door="ws")
        except Exception:  # the database is unreachable: nothing is acked, the agent re-sends
            log.exception("ws ingest failed", extra={"session_id": self.session_id, "batch_id": frame.batch_id})
            WS_MESSAGES.labels(frame.type, "error").inc()
            self.error("ingest_failed", "the events could not be stored; nothing was acknowledged, send them again",
                       batch_id=frame.batch_id)
            return
        for status, count in collections.Counter(r.status for r in results).items():
            WS_EVENTS.labels(status).inc(count)
        self.send_many([{"type": "ack", "event_id": r.event_id, "incident_id": r.incident_id,
                         "status": "processed" if r.status == "accepted" else "duplicate"} for r in results])
        WS_MESSAGES.labels(frame.type, "ok").inc()
        log.debug("ws frame ingested", extra={"session_id": self.session_id, "events": len(results),
                                              "duration_ms": round((time.perf_counter() - started) * 1000, 2)})


class _HandledResponse(Response):
    """What flask-sock returns once a socket is done: the server already wrote everything."""

    def __init__(self, ws: Server) -> None:
        super().__init__()
        self._ws = ws

    def __call__(self, environ: Any, start_response: Any) -> Any:
        if self._ws.mode == "gunicorn":
            raise StopIteration()
        if self._ws.mode == "werkzeug":
            return super().__call__(environ, start_response)
        return []


def events_socket() -> Any:
    settings = get_settings()
    try:
        principal = _handshake_principal()
    except AuthError as exc:
        return error_response(401, "unauthenticated", str(exc))
    except PermissionDenied as exc:
        return error_response(403, "forbidden", str(exc))
    ws = Server(request.environ, max_message_size=settings.ws_max_message_bytes * HARD_LIMIT_FACTOR)
    socket = EventSocket(ws, principal, settings)
    WS_CONNECTIONS.inc()
    try:
        socket.run()
    except ConnectionClosed:
        pass
    finally:
        WS_CONNECTIONS.dec()
        log.info("ws disconnected", extra={"session_id": socket.session_id})
        try:
            ws.close()
        except Exception:  # already closed by the peer
            pass
    return _HandledResponse(ws)


def register(app: Flask) -> None:
    """Mount /ws/events (create_app calls this)."""
    app.add_url_rule("/ws/events", "ws_events", events_socket, websocket=True)
