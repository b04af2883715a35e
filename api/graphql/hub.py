"""Fan-out of the change stream to this process's GraphQL subscribers.

Every committed incident change is published on Redis (app/services/changes.py) by whichever
process made it. Each web process runs one hub: one Redis subscription, whatever the number of
subscribers, so any web process serves any subscriber. For each batch of messages the hub loads
the incidents they name in one query (subscribers see the incident as REST shows it, not the
partial announcement), builds one root value per change, and hands it to every subscriber whose
predicate matches; subscribers running the same document with the same variables share one
execution per change."""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Protocol

from prometheus_client import Counter, Gauge

from api.graphql.loaders import GraphQLContext
from app.domain.times import iso
from app.services import changes, incident_reads

log = logging.getLogger(__name__)

SUBSCRIPTIONS = Gauge("incident_manager_graphql_subscriptions", "Open GraphQL subscriptions",
                      multiprocess_mode="livesum")
HUB_CONNECTED = Gauge("incident_manager_graphql_hub_connected",
                      "1 while this web process's change-stream subscription is up", multiprocess_mode="livemax")
DELIVERIES = Counter("incident_manager_graphql_deliveries_total", "Subscription results sent", ["field"])

UPDATE_TYPES = {"incident_created": "CREATED", "incident_updated": "UPDATED", "incident_acknowledged": "ACKNOWLEDGED",
                "incident_resolved": "RESOLVED", "incident_closed": "CLOSED", "incident_merged": "MERGED",
                "incident_escalated": "ESCALATED", "sla_breached": "SLA_BREACHED"}
STATUS_KINDS = {"incident_acknowledged", "incident_resolved", "incident_closed"}


class Subscriber(Protocol):
    def matches(self, change: Mapping[str, Any]) -> bool: ...

    def deliver(self, change: Mapping[str, Any], shared: dict[Any, Any], context: GraphQLContext) -> None: ...


def change_root(message: Mapping[str, Any], incident: Mapping[str, Any] | None) -> dict[str, Any]:
    """The root value the subscription resolvers read (api/graphql/schema.py, Subscription)."""
    kind = str(message.get("kind") or "")
    listed = [dict(c) for c in message.get("changes") or [] if isinstance(c, Mapping)]
    announced = dict(message.get("incident") or {})
    full = dict(incident) if incident else announced
    status_change = next((c for c in listed if c.get("field") == "status"), None)
    return {
        "kind": kind,
        "update_type": UPDATE_TYPES.get(kind, "UPDATED"),
        "incident": full,
        "changes": listed,
        "changed_fields": sorted({str(c["field"]) for c in listed if c.get("field")}) or
                          sorted(k for k in announced if k != "id"),
        "old_state": status_change.get("old_value") if status_change else None,
        "new_state": status_change.get("new_value") if status_change else full.get("status"),
        "changed_by": full.get("acknowledged_by") if kind == "incident_acknowledged" else (
            (full.get("resolution") or {}).get("resolved_by") if kind == "incident_resolved" else None),
        "status_changed": kind in STATUS_KINDS or status_change is not None,
        "timestamp": full.get("updated_at") or iso(datetime.now(timezone.utc)),
    }


class ChangeHub:
    """One per process (forked web workers each start their own on first use)."""

    def __init__(self, source: Callable[[], Any] = changes.subscribe_batches) -> None:
        self._source = source
        self._subscribers: dict[Any, Subscriber] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self.ready = threading.Event()

    def add(self, key: Any, subscriber: Subscriber, wait: float = 10.0) -> bool:
        """Register; True once the hub's Redis subscription is up (changes committed from then on
        reach the subscriber)."""
        with self._lock:
            self._subscribers[key] = subscriber
            self._ensure_running()
        SUBSCRIPTIONS.inc()
        return self.ready.wait(wait)

    def remove(self, key: Any) -> None:
        with self._lock:
            if self._subscribers.pop(key, None) is not None:
                SUBSCRIPTIONS.dec()

    def count(self) -> int:
        return len(self._subscribers)

    def _ensure_running(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self.ready.clear()
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="graphql-change-hub", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                feed = self._source()
                for batch in feed:
                    if not self.ready.is_set():
                        self.ready.set()
                        HUB_CONNECTED.set(1)
                        log.info("graphql hub subscribed to the change stream", extra={"pid": os.getpid()})
                    backoff = 0.5
                    if batch:
                        self.dispatch(batch)
            except Exception:  # Redis went away: subscribers stay, the hub reconnects
                self.ready.clear()
                HUB_CONNECTED.set(0)
                log.warning("graphql hub lost the change stream; reconnecting", exc_info=True,
                            extra={"retry_in_secs": backoff})
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def dispatch(self, batch: list[Mapping[str, Any]]) -> int:
        """Deliver a batch of change messages; how many results were handed over."""
        with self._lock:
            subscribers = list(self._subscribers.values())
        if not subscribers:
            return 0
        ids = [str((m.get("incident") or {}).get("id")) for m in batch if (m.get("incident") or {}).get("id")]
        loaded = incident_reads.incidents_by_id(ids)
        context = GraphQLContext(principal=None)
        context.loaders.seen(loaded.values())
        sent = 0
        for message in batch:
            root = change_root(message, loaded.get(str((message.get("incident") or {}).get("id"))))
            shared: dict[Any, Any] = {}  # one execution per (document, variables) per change
            for subscriber in subscribers:
                try:
                    if subscriber.matches(root):
                        subscriber.deliver(root, shared, context)
                        sent += 1
                except Exception:
                    log.exception("graphql subscriber failed on a change", extra={"kind": root["kind"]})
        return sent


_hub: ChangeHub | None = None
_hub_lock = threading.Lock()


def get_hub() -> ChangeHub:
    global _hub
    with _hub_lock:
        if _hub is None or _hub._pid not in (None, os.getpid()):
            _hub = ChangeHub()
        return _hub


def hub_health() -> dict[str, Any]:
    """This web process's subscriptions for `/health`: `idle` with none, else whether the change
    stream subscription is up."""
    hub = _hub
    count = hub.count() if hub is not None and hub._pid == os.getpid() else 0
    if not count:
        return {"status": "idle", "subscriptions": 0}
    return {"status": "up" if hub is not None and hub.ready.is_set() else "down", "subscriptions": count}
