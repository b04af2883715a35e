"""GraphQL over WebSocket at `/graphql/ws` and `/graphql`: the `graphql-transport-ws` protocol
(what the `graphql-ws` client speaks; github.com/enisdenjo/graphql-ws, PROTOCOL.md).

- The client asks for the `graphql-transport-ws` subprotocol (else closed with 4406).
- `connection_init` within graphql.connection_init_timeout_secs (else 4408); its payload carries
  the credential (`Authorization: "Bearer <JWT or API key>"`, `X-API-Key`, `apiKey` or `token`),
  or the handshake did (the same headers, or `?token=`). No valid credential: 4403 Forbidden. A
  second `connection_init`: 4429. The server answers `connection_ack`.
- `subscribe` before the ack: 4401 Unauthorized. A second `subscribe` with an id in use: 4409.
  A document that cannot run gets `error` (a list of GraphQL errors) and nothing else; a query or
  mutation runs once (`next`, `complete`); a subscription sends `next` per matching change until
  the client sends `complete`.
- `ping` is answered with `pong`; an invalid message closes with 4400 and the reason.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from typing import Any, Mapping

from flask import request
from graphql import GraphQLError
from graphql.execution.values import get_argument_values, get_variable_values
from simple_websocket import ConnectionClosed, Server

from api.auth import enforce
from api.graphql.execution import Prepared, Rejected, errors_body, formatted, prepare, run
from api.graphql.hub import DELIVERIES, get_hub
from api.graphql.loaders import GraphQLContext
from api.graphql.schema import schema
from api.ws import _HandledResponse
from app.config import get_settings
from app.domain.severity import PAGING_SEVERITIES
from app.services.auth import AuthError, PermissionDenied, Principal, authenticate_api_key, authenticate_bearer

log = logging.getLogger(__name__)

PROTOCOL = "graphql-transport-ws"


def _value(item: Any) -> Any:
    return getattr(item, "value", item)


def _set(items: Any) -> set[Any]:
    return {_value(i) for i in items or []}


class SubscriptionFilter:
    """Which changes a subscription's root field wants (its arguments, coerced)."""

    def __init__(self, field: str, args: Mapping[str, Any]) -> None:
        self.field = field
        self.args = dict(args)
        flt = dict(args.get("filter") or {})
        self.severities = _set(args.get("severities")) | _set(flt.get("severity"))
        self.statuses = _set(flt.get("status")) | _set(flt.get("state"))
        self.sources = set(flt.get("source") or [])
        self.categories = {str(c).lower() for c in flt.get("category") or []}
        self.update_types = _set(flt.get("updateTypes"))
        self.incident_id = args.get("incidentId")

    def __call__(self, change: Mapping[str, Any]) -> bool:
        incident = change["incident"]
        if self.severities and incident.get("severity") not in self.severities:
            return False
        if self.statuses and incident.get("status") not in self.statuses:
            return False
        if self.sources and incident.get("source") not in self.sources:
            return False
        if self.categories and str(incident.get("category") or "").lower() not in self.categories:
            return False
        if self.update_types and change["update_type"] not in self.update_types:
            return False
        kind = change["kind"]
        if self.field in ("newIncidents", "alerts"):
            return kind == "incident_created"
        if self.field == "criticalIncidents":
            if incident.get("severity") not in PAGING_SEVERITIES:
                return False
            return kind == "incident_created" or any(
                c.get("field") == "severity" and c.get("new_value") in PAGING_SEVERITIES for c in change["changes"])
        if self.field == "incidentStateChanges":
            return change["status_changed"] and (self.incident_id is None or incident.get("id") == self.incident_id)
        return True  # incidentUpdates, incidentUpdated: every lifecycle change


def subscription_filter(prepared: Prepared) -> SubscriptionFilter:
    graphql_schema = schema.graphql_schema
    coerced = get_variable_values(graphql_schema, prepared.operation.variable_definitions or [],
                                  dict(prepared.variables))
    if isinstance(coerced, list):
        raise Rejected(coerced, "validation_failed")
    [node] = [s for s in prepared.operation.selection_set.selections]  # the spec's single root field
    field_name = node.name.value  # type: ignore[attr-defined]
    subscription_type = graphql_schema.subscription_type
    assert subscription_type is not None
    args = get_argument_values(subscription_type.fields[field_name], node, coerced)  # type: ignore[arg-type]
    return SubscriptionFilter(field_name, args)


class Subscription:
    """One `subscribe` of a connection: a filter and where its results go."""

    def __init__(self, socket: "GraphQLSocket", op_id: str, prepared: Prepared, flt: SubscriptionFilter) -> None:
        self.socket = socket
        self.op_id = op_id
        self.prepared = prepared
        self.filter = flt
        self.share_key = (prepared.document.loc.source.body if prepared.document.loc else id(prepared),  # type: ignore[union-attr]
                          prepared.operation_name, json.dumps(prepared.variables, sort_keys=True, default=str))

    def matches(self, change: Mapping[str, Any]) -> bool:
        return self.filter(change)

    def deliver(self, change: Mapping[str, Any], shared: dict[Any, Any], context: GraphQLContext) -> None:
        payload = shared.get(self.share_key)
        if payload is None:  # executed and serialised once per change for every identical subscription
            payload = json.dumps(formatted(run(self.prepared, context, root=change)), default=str)
            shared[self.share_key] = payload
        self.socket.send_text(f'{{"id":{json.dumps(self.op_id)},"type":"next","payload":{payload}}}')
        DELIVERIES.labels(self.filter.field).inc()


def _credential(payload: Any) -> str | None:
    """The credential of connection_init's payload, else of the handshake."""
    if isinstance(payload, Mapping):
        lowered = {str(k).lower(): v for k, v in payload.items()}
        headers = lowered.get("headers")
        if isinstance(headers, Mapping):
            lowered = {**{str(k).lower(): v for k, v in headers.items()}, **lowered}
        for name in ("authorization", "x-api-key", "apikey", "api_key", "token"):
            value = lowered.get(name)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def authenticate(credential: str | None, handshake: Mapping[str, str]) -> Principal:
    if credential is None:
        key = handshake.get("x-api-key")
        if key:
            return authenticate_api_key(key)
        credential = handshake.get("authorization") or handshake.get("token")
    if not credential:
        raise AuthError("missing credentials: send Authorization (Bearer <JWT or API key>) or X-API-Key in "
                        "connection_init's payload")
    scheme, _, value = credential.partition(" ")
    token = value.strip() if scheme.lower() == "bearer" else credential
    return authenticate_bearer(token)


class GraphQLSocket:
    def __init__(self, ws: Server, handshake: Mapping[str, str]) -> None:
        self.ws = ws
        self.handshake = handshake
        self.settings = get_settings().graphql
        self.session_id = f"gql-{uuid.uuid4().hex[:12]}"
        self.principal: Principal | None = None
        self.init_received = False
        self.subscriptions: dict[str, Subscription] = {}
        self._outbox: queue.Queue[str | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write, name=f"graphql-ws-{self.session_id}", daemon=True)
        self._closed = False

    # -------------------------------------------------------------------------------- sending
    def send(self, message: Mapping[str, Any]) -> None:
        """Queue a message; the writer sends in order (the hub never waits on a slow client)."""
        self.send_text(json.dumps(message, default=str))

    def send_text(self, text: str) -> None:
        if not self._closed:
            self._outbox.put(text)

    def _write(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            try:
                self.ws.send(item)
            except ConnectionClosed:
                self._closed = True
                return

    def close(self, code: int, reason: str) -> None:
        log.info("graphql ws closed", extra={"session_id": self.session_id, "code": code, "reason": reason})
        self._stop_writer(flush=True)
        try:
            self.ws.close(code, reason)
        except ConnectionClosed:
            pass
        self._closed = True

    def _stop_writer(self, flush: bool) -> None:
        if self._writer.is_alive():
            self._outbox.put(None)
            self._writer.join(timeout=5 if flush else 0.1)

    # -------------------------------------------------------------------------------- receiving
    def run(self) -> None:
        self._writer.start()
        deadline = time.monotonic() + self.settings.connection_init_timeout_secs
        try:
            while not self._closed:
                timeout = max(0.05, deadline - time.monotonic()) if not self.init_received else None
                data = self.ws.receive(timeout=timeout)
                if data is None:
                    if not self.init_received and time.monotonic() >= deadline:
                        self.close(4408, "Connection initialisation timeout")
                        return
                    continue
                self.handle(data)
        except ConnectionClosed:
            pass
        finally:
            self._end()

    def _end(self) -> None:
        hub = get_hub()
        for op_id in list(self.subscriptions):
            hub.remove((self.session_id, op_id))
        self.subscriptions.clear()
        self._closed = True
        self._stop_writer(flush=False)

    def handle(self, data: str | bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            self.close(4400, "Invalid message received: not JSON")
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self.close(4400, "Invalid message received: expected an object with a `type`")
            return
        kind = message["type"]
        if kind == "connection_init":
            self.on_init(message.get("payload"))
        elif kind == "ping":
            self.send({"type": "pong"})
        elif kind == "pong":
            pass
        elif kind == "subscribe":
            self.on_subscribe(message)
        elif kind == "complete":
            op_id = message.get("id")
            if not isinstance(op_id, str):
                self.close(4400, "Invalid message received: complete needs an `id`")
                return
            self._stop(op_id)
        else:
            self.close(4400, f"Invalid message received: unknown type {kind!r}")

    def on_init(self, payload: Any) -> None:
        if self.init_received:
            self.close(4429, "Too many initialisation requests")
            return
        self.init_received = True
        if payload is not None and not isinstance(payload, dict):
            self.close(4400, "Invalid message received: connection_init's payload must be an object")
            return
        try:
            principal = authenticate(_credential(payload), self.handshake)
            enforce(principal, "incident:read")
        except (AuthError, PermissionDenied) as exc:
            log.info("graphql ws refused", extra={"session_id": self.session_id, "reason": str(exc)})
            self.close(4403, "Forbidden")
            return
        except Exception as exc:  # the rate limit (ApiError 429) and the like
            self.close(4403, f"Forbidden: {getattr(exc, 'message', exc)}"[:120])
            return
        self.principal = principal
        self.send({"type": "connection_ack"})
        log.info("graphql ws connected", extra={"session_id": self.session_id, "principal": principal.name})

    def on_subscribe(self, message: Mapping[str, Any]) -> None:
        op_id = message.get("id")
        payload = message.get("payload")
        if not isinstance(op_id, str) or not op_id or not isinstance(payload, Mapping):
            self.close(4400, "Invalid message received: subscribe needs an `id` and a `payload`")
            return
        if self.principal is None:
            self.close(4401, "Unauthorized")
            return
        if op_id in self.subscriptions:
            self.close(4409, f"Subscriber for {op_id} already exists")
            return
        try:
            prepared = prepare(payload, self.settings)
            enforce(self.principal, prepared.permission)
            if prepared.kind != "subscription":
                result = formatted(run(prepared, GraphQLContext(self.principal)))
                self.send({"id": op_id, "type": "next", "payload": result})
                self.send({"id": op_id, "type": "complete"})
                return
            if get_settings().redis_url is None:
                raise Rejected([GraphQLError("subscriptions need the change stream: set REDIS_URL (the embedded "
                                             "default has no Redis)")], "subscriptions_unavailable")
            if len(self.subscriptions) >= self.settings.max_subscriptions_per_connection:
                raise Rejected([GraphQLError(
                    f"at most {self.settings.max_subscriptions_per_connection} subscriptions per connection "
                    "(graphql.max_subscriptions_per_connection)")], "too_many_subscriptions")
            flt = subscription_filter(prepared)
        except Rejected as exc:
            self.send({"id": op_id, "type": "error", "payload": errors_body(exc.errors, exc.code)["errors"]})
            return
        except PermissionDenied as exc:
            self.send({"id": op_id, "type": "error", "payload": [{"message": str(exc),
                                                                   "extensions": {"code": "forbidden"}}]})
            return
        except Exception as exc:  # 429 from the rate limit
            message_text = getattr(exc, "message", None)
            if message_text is None:
                raise
            code = getattr(exc, "code", "error")
            self.send({"id": op_id, "type": "error",
                       "payload": [{"message": message_text, "extensions": {"code": code}}]})
            return
        subscription = Subscription(self, op_id, prepared, flt)
        self.subscriptions[op_id] = subscription
        if not get_hub().add((self.session_id, op_id), subscription):
            log.warning("graphql hub not subscribed yet; changes before it is may be missed",
                        extra={"session_id": self.session_id})
        log.info("graphql subscription started", extra={"session_id": self.session_id, "id": op_id,
                                                        "field": flt.field})

    def _stop(self, op_id: str) -> None:
        if self.subscriptions.pop(op_id, None) is not None:
            get_hub().remove((self.session_id, op_id))
            log.info("graphql subscription completed", extra={"session_id": self.session_id, "id": op_id})


def _handshake() -> dict[str, str]:
    found = {name: request.headers.get(name, "") for name in ("authorization", "x-api-key")}
    found["token"] = (request.args.get("token") or "").strip()
    return {k: v for k, v in found.items() if v}


def graphql_socket() -> Any:
    """graphql-transport-ws (docs/graphql.md, "Subscriptions")."""
    settings = get_settings()
    ws = Server(request.environ, subprotocols=[PROTOCOL], max_message_size=settings.ws_max_message_bytes)
    if ws.subprotocol != PROTOCOL:
        try:
            ws.close(4406, "Subprotocol not acceptable")
        except ConnectionClosed:
            pass
        return _HandledResponse(ws)
    socket = GraphQLSocket(ws, _handshake())
    try:
        socket.run()
    finally:
        try:
            ws.close()
        except ConnectionClosed:
            pass
    return _HandledResponse(ws)
