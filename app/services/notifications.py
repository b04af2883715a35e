"""Sending delivery records (app/services/deliveries.py): one record per (incident, step, channel,
target), sent through its channel under the channel's breaker.

- **Claim**: one statement moves due records (`pending`, or `sending` whose lease ran out) to
  `sending` under `FOR UPDATE SKIP LOCKED`, counts the attempt and sets the lease
  (`next_attempt_at`). Only the holder of a live claim sends; a record is claimed again only after
  its lease ran out (its worker died), and is then sent again with the same idempotency key.
- **Send**: claims go into per-target lanes of this process's sender pool (at most
  `NOTIFICATION_TARGET_CONCURRENCY` sends at a time to one target, `NOTIFICATION_SEND_THREADS` in
  all): a slow target fills its own lane, never the others'. A claim whose send could no longer
  finish within its lease is handed back unsent instead of being sent late.
- **Record**: each outcome is written as it completes (batched every 50 ms, one statement), only
  if the record is still this claim's (`status = 'sending'` and the claimed attempt number):
  `sent` (response code and reference), back to `pending` at a backed-off time, or `failed` plus a
  dead letter once the attempts run out or the error will not change.

Runs are started by beat's `notifications.dispatch` (one `notifications.deliver_due` run at a time
per process; a run keeps claiming while records are due, up to its time budget).
docs/notifications.md, "Delivery".
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

from sqlalchemy import and_, bindparam, exists, or_, select, update

from app import metrics
from app.adapters.channels import Sent, jira, pagerduty, slack, webhook
from app.adapters.channels import email as email_channel
from app.adapters.db import read_session, retry_on_conflict, unit_of_work
from app.adapters.escalation_models import NotificationDelivery, User
from app.adapters.http_client import DeliveryError
from app.adapters.models import Incident, JSONType, UTCDateTime
from app.config.outbound import OutboundSettings, get_outbound_settings
from app.domain.times import iso
from app.services.deadletters import record_dead_letter
from app.services.incidents import incident_to_dict
from app.services.lifecycle import LIFECYCLE_TOKEN

log = logging.getLogger(__name__)

TASK_NAME = "notifications.deliver"
CLAIM_BATCH = 200  # records claimed per statement
FLUSH_SECS = 0.05  # outcomes wait at most this long to be written (one statement for all waiting)
UPDATE_EVENTS = ("incident_acknowledged", "incident_resolved", "incident_closed")

_TABLE: Any = NotificationDelivery.__table__


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, str(default)))


def lease_secs() -> float:
    """How long a claimed record is left to its worker before it is due again."""
    return _env_float("NOTIFICATION_LEASE_SECS", 120)


def max_send_secs() -> float:
    """The longest one send may take (timeouts x attempts + backoff): a claim starts its send only
    while at least this much of its lease is left (at most half the lease)."""
    return min(_env_float("NOTIFICATION_MAX_SEND_SECS", 60), lease_secs() / 2)


def max_attempts() -> int:
    return int(os.environ.get("NOTIFICATION_MAX_ATTEMPTS", "5"))


def send_threads() -> int:
    return max(1, int(os.environ.get("NOTIFICATION_SEND_THREADS", "32")))


def target_concurrency() -> int:
    return max(1, int(os.environ.get("NOTIFICATION_TARGET_CONCURRENCY", "16")))


def run_budget_secs() -> float:
    return _env_float("NOTIFICATION_RUN_SECS", 50)


@dataclass
class _Claim:
    id: int
    incident_id: str
    channel: str
    recipient: str
    key: str
    attempts: int  # including this one: the fence the outcome is written under
    reason: dict[str, Any]
    start_by: float = 0.0  # monotonic: the send must start before this, or the claim is handed back
    target: str = ""
    incident: dict[str, Any] = field(default_factory=dict)
    contact: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)  # Slack messages / the JIRA issue to update

    @property
    def event(self) -> str:
        return str(self.reason.get("event") or "escalated")


class Released(Exception):
    """A claim handed back unsent (its lease would run out before the send could finish)."""


# ---------------------------------------------------------------- claim

def _held_back() -> Any:
    """True for a record that must wait for an earlier record of its incident still pending or
    sending: PagerDuty events of one incident (trigger, acknowledge, resolve on one dedup_key) go
    out in the order they were written, and so do the lifecycle records of one incident to one
    target (a webhook hears created before acknowledged; a JIRA comment waits for the issue)."""
    earlier = _TABLE.alias("earlier")
    record = _TABLE.c
    same_stream = or_(
        and_(record.channel == "pagerduty", earlier.c.channel == "pagerduty"),
        and_(record.escalation_token == LIFECYCLE_TOKEN, earlier.c.escalation_token == LIFECYCLE_TOKEN,
             earlier.c.channel == record.channel, earlier.c.recipient == record.recipient))
    waits = exists().where(earlier.c.incident_id == record.incident_id, earlier.c.id < record.id,
                           earlier.c.status.in_(("pending", "sending")), same_stream)
    # the cheap test first: an escalation page to another channel never waits
    return and_(or_(record.channel == "pagerduty", record.escalation_token == LIFECYCLE_TOKEN), waits)


def _claim_statement(now: datetime, lease: datetime, limit: int, ids: Sequence[int] | None) -> Any:
    due = or_(_TABLE.c.status == "pending", and_(_TABLE.c.status == "sending", _TABLE.c.next_attempt_at <= now))
    if ids is None:
        due = and_(_TABLE.c.status.in_(("pending", "sending")), _TABLE.c.next_attempt_at <= now)
    chosen = select(_TABLE.c.id).where(due, ~_held_back())
    chosen = chosen.where(_TABLE.c.id.in_(list(ids))) if ids is not None else chosen
    locked = (chosen.order_by(_TABLE.c.next_attempt_at, _TABLE.c.id).limit(limit)
              .with_for_update(skip_locked=True).scalar_subquery())
    return (update(_TABLE).where(_TABLE.c.id.in_(locked))
            .values(status="sending", attempts=_TABLE.c.attempts + 1, next_attempt_at=lease, updated_at=now)
            .returning(_TABLE.c.id, _TABLE.c.incident_id, _TABLE.c.escalation_token, _TABLE.c.channel,
                       _TABLE.c.recipient, _TABLE.c.idempotency_key, _TABLE.c.attempts, _TABLE.c.reason))


def claim(limit: int = CLAIM_BATCH, ids: Sequence[int] | None = None,
          now: datetime | None = None) -> list[_Claim]:
    """Claim up to `limit` due records (or the given ones, if pending or their lease ran out), in
    one transaction: records whose escalation step is over become `stale`; the rest are returned
    with their incident, the recipient's contact and their target, ready to send."""
    now = now or datetime.now(timezone.utc)
    lease = lease_secs()
    start_by = time.monotonic() + lease - max_send_secs()

    def run() -> list[_Claim]:
        with unit_of_work() as session:
            rows = session.execute(_claim_statement(now, now + timedelta(seconds=lease), limit, ids)).all()
            if not rows:
                return []
            incidents = {i.id: i for i in session.scalars(select(Incident).where(
                Incident.id.in_({r.incident_id for r in rows})))}
            users = {u.name: u for u in session.scalars(select(User).where(
                User.name.in_({r.recipient for r in rows})))}
            stale: list[int] = []
            claims: list[_Claim] = []
            snapshots: dict[str, dict[str, Any]] = {}
            for r in sorted(rows, key=lambda r: r.id):
                incident = incidents.get(r.incident_id)
                if incident is None or (r.escalation_token != LIFECYCLE_TOKEN
                                        and incident.escalation_token != r.escalation_token):
                    stale.append(r.id)
                    metrics.NOTIFICATIONS_SENT.labels(channel=r.channel, outcome="stale").inc()
                    continue
                user = users.get(r.recipient)
                contact = dict(user.contact or {}) if user is not None else {}
                if user is not None and user.email:
                    contact.setdefault("email", user.email)
                if incident.id not in snapshots:
                    snapshots[incident.id] = incident_to_dict(incident)
                item = _Claim(r.id, r.incident_id, r.channel, r.recipient, r.idempotency_key, r.attempts,
                              dict(r.reason or {}), start_by, incident=snapshots[incident.id], contact=contact)
                item.target = _target(item)
                claims.append(item)
            if stale:
                session.execute(update(_TABLE).where(_TABLE.c.id.in_(stale)).values(
                    status="stale", attempts=_TABLE.c.attempts - 1, next_attempt_at=None, updated_at=now,
                    last_error="not sent: the incident was acknowledged, paused, resolved or moved to another step"))
            _attach_references(session, [c for c in claims if c.channel in ("slack", "jira")
                                         and c.event in UPDATE_EVENTS])
            return claims

    return retry_on_conflict("claim notification deliveries", run)


def _target(item: _Claim) -> str:
    """The lane a record is sent in: its receiver (each webhook by name; slack, pagerduty, email)."""
    if item.channel == "webhook":
        return f"webhook:{item.reason.get('webhook') or item.contact.get('webhook') or '?'}"
    return item.channel


def _attach_references(session: Any, claims: list[_Claim]) -> None:
    """What an update changes: the Slack messages (channel + ts) the incident's sent posts returned,
    the JIRA issue (key) its creation returned."""
    if not claims:
        return
    found = _references(session, {c.incident_id for c in claims})
    for c in claims:
        c.messages = found.get((c.incident_id, c.channel), [])


def _references(session: Any, incident_ids: set[str]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(incident, channel) -> the references of its sent Slack posts / JIRA issue, oldest first."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for incident_id, channel, reason in session.execute(
            select(_TABLE.c.incident_id, _TABLE.c.channel, _TABLE.c.reason).where(
                _TABLE.c.incident_id.in_(incident_ids), _TABLE.c.channel.in_(("slack", "jira")),
                _TABLE.c.status == "sent").order_by(_TABLE.c.id)):
        ref = ((reason or {}).get("delivery") or {}).get("reference") or {}
        if (channel == "slack" and ref.get("ts") and ref.get("channel")) or (channel == "jira" and ref.get("key")):
            found.setdefault((incident_id, channel), []).append(dict(ref))
    return found


# ---------------------------------------------------------------- send

def _send(item: _Claim, outbound: OutboundSettings) -> Sent:
    channel, incident, contact, event = item.channel, item.incident, item.contact, item.event
    if channel == "email":
        recipients = [contact["email"]] if contact.get("email") else []
        return email_channel.send(incident, outbound, recipients, event, item.key)
    if channel == "slack":
        if not outbound.slack.enabled:
            raise DeliveryError("slack", "slack is not configured (notifications.slack)", False, kind="not_configured")
        if event in UPDATE_EVENTS:
            return _slack_update(item, outbound)
        return slack.post(incident, outbound, event)
    if channel == "pagerduty":
        if not outbound.pagerduty.enabled:
            raise DeliveryError("pagerduty", "pagerduty is not configured (notifications.pagerduty)", False,
                                kind="not_configured")
        action = {"incident_acknowledged": "acknowledge", "incident_resolved": "resolve",
                  "incident_closed": "resolve"}.get(event, "trigger")
        return pagerduty.send(incident, outbound, action)
    if channel == "jira":
        if not outbound.jira.enabled:
            raise DeliveryError("jira", "jira is not configured (integrations.jira)", False, kind="not_configured")
        if event in UPDATE_EVENTS:
            keys = [m["key"] for m in item.messages]
            if not keys:
                return Sent("jira", "comment", None, 0, {"commented": []})
            return jira.comment(keys[0], item.incident, outbound, event, str(item.reason.get("actor") or ""))
        return jira.create_issue(incident, outbound)
    if channel == "webhook":
        name = str(item.reason.get("webhook") or contact.get("webhook") or "")
        hook = outbound.webhook(name)
        if hook is None:
            raise DeliveryError("webhook", f"the recipient names no configured webhook "
                                f"(contact.webhook = {name!r})", False, kind="not_configured")
        return webhook.send(hook, outbound, event, incident, item.key)
    raise DeliveryError(channel, f"no {channel} channel is available (email, slack, pagerduty, jira, webhook are)",
                        False,
                        kind="not_configured")


def _slack_update(item: _Claim, outbound: OutboundSettings) -> Sent:
    """chat.update of every message the incident's posts left (none yet: nothing to redraw)."""
    updated: list[dict[str, Any]] = []
    last: Sent | None = None
    for msg in item.messages:
        last = slack.update(item.incident, outbound, msg["channel"], msg["ts"])
        updated.append(msg)
    return Sent("slack", "chat.update", last.status_code if last else None, last.attempts if last else 0,
                {"updated": updated})


def send_now(channel: str, incident: dict[str, Any], contact: dict[str, Any], key: str,
             outbound: OutboundSettings | None = None) -> Sent:
    """Send one message through `channel` now, outside the delivery records (a playbook's `notify`
    step, which keeps its own attempts); raises DeliveryError."""
    item = _Claim(0, str(incident.get("id")), channel, "", key, 1, {}, incident=incident, contact=contact)
    return _send(item, outbound or get_outbound_settings())


def _attempt(item: _Claim, outbound: OutboundSettings) -> Sent | DeliveryError | Released:
    if time.monotonic() > item.start_by:
        return Released("the claim's lease would run out before the send could finish")
    try:
        return _send(item, outbound)
    except DeliveryError as exc:
        return exc
    except Exception as exc:  # a bug in a channel must not lose the outcome (the record would wait a lease)
        log.exception("notification send raised", extra={"delivery_id": item.id, "channel": item.channel})
        return DeliveryError(item.target, f"{type(exc).__name__}: {exc}", True, kind="internal")


class _Sender:
    """This process's sender pool with per-target lanes: at most `per_target` sends to one target
    at a time; the others of that target wait in its lane (not in a thread)."""

    def __init__(self, threads: int, per_target: int) -> None:
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="notify-send")
        self.per_target = per_target
        self.lock = threading.Lock()
        self.waiting: dict[str, deque[tuple[_Claim, OutboundSettings, queue.SimpleQueue[Any]]]] = {}
        self.running: dict[str, int] = {}

    def queued(self, target: str) -> int:
        with self.lock:
            return self.running.get(target, 0) + len(self.waiting.get(target, ()))

    def submit(self, item: _Claim, outbound: OutboundSettings, done: queue.SimpleQueue[Any]) -> None:
        job = (item, outbound, done)
        with self.lock:
            start = self.running.get(item.target, 0) < self.per_target
            if start:
                self.running[item.target] = self.running.get(item.target, 0) + 1
            else:
                self.waiting.setdefault(item.target, deque()).append(job)
            metrics.NOTIFICATION_LANE.labels(target=item.target).set(
                self.running.get(item.target, 0) + len(self.waiting.get(item.target, ())))
        if start:
            self.pool.submit(self._run, job)

    def _run(self, job: tuple[_Claim, OutboundSettings, queue.SimpleQueue[Any]]) -> None:
        while job is not None:
            item, outbound, done = job
            try:
                done.put((item, _attempt(item, outbound)))
            finally:
                with self.lock:  # the lane's next record runs on this thread: no hand-off
                    lane = self.waiting.get(item.target)
                    nxt = lane.popleft() if lane else None
                    if nxt is None:
                        self.running[item.target] -= 1
                    metrics.NOTIFICATION_LANE.labels(target=item.target).set(
                        self.running.get(item.target, 0) + len(lane or ()))
            job = nxt  # type: ignore[assignment]


_sender: tuple[tuple[int, int, int], _Sender] | None = None
_sender_lock = threading.Lock()
_runs = threading.BoundedSemaphore(1)


def sender() -> _Sender:
    """This process's sender pool (a new one after a fork or when its settings changed)."""
    global _sender
    key = (os.getpid(), send_threads(), target_concurrency())
    with _sender_lock:
        if _sender is None or _sender[0] != key:
            if _sender is not None and _sender[0][0] == key[0]:
                _sender[1].pool.shutdown(wait=False)  # its running sends finish and report
            _sender = (key, _Sender(key[1], key[2]))
        return _sender[1]


# ---------------------------------------------------------------- record

def _retry_at(exc: DeliveryError, attempts: int, now: datetime) -> datetime:
    # full jitter over 5 s * 2^(n-1), capped at 10 min; an open breaker's or a receiver's wait is a floor
    delay = random.uniform(0, min(600.0, 5.0 * 2 ** (attempts - 1)))
    return now + timedelta(seconds=max(delay, exc.retry_after_secs or 0.0))


_RECORD = (update(_TABLE)
           .where(_TABLE.c.id == bindparam("b_id"), _TABLE.c.status == "sending",
                  _TABLE.c.attempts == bindparam("b_claimed"))
           .values(status=bindparam("b_status"), attempts=bindparam("b_attempts"),
                   last_error=bindparam("b_error"), response_code=bindparam("b_code"),
                   reason=bindparam("b_reason", type_=JSONType),
                   next_attempt_at=bindparam("b_next", type_=UTCDateTime),
                   updated_at=bindparam("b_now", type_=UTCDateTime)))


def _outcome_row(item: _Claim, outcome: Sent | DeliveryError | Released, now: datetime) -> dict[str, Any]:
    row = {"b_id": item.id, "b_claimed": item.attempts, "b_now": now}
    if isinstance(outcome, Released):  # handed back unsent: due again at once, the attempt not spent
        return {**row, "b_status": "pending", "b_attempts": item.attempts - 1, "b_error": str(outcome),
                "b_code": None, "b_reason": item.reason, "b_next": now}
    if isinstance(outcome, Sent):
        reason = {**item.reason, "delivery": {
            "response_code": outcome.status_code, "reference": dict(outcome.reference), "target": outcome.target,
            "attempts": item.attempts, "sent_at": iso(now)}}
        return {**row, "b_status": "sent", "b_attempts": item.attempts, "b_error": None,
                "b_code": outcome.status_code, "b_reason": reason, "b_next": None}
    # an open breaker or a reached rate limit tried nothing: wait for it without spending an attempt
    untried = outcome.kind in ("circuit_open", "rate_limited")
    final = not untried and (not outcome.retryable or item.attempts >= max_attempts())
    attempts = item.attempts - 1 if untried else item.attempts
    reason = {**item.reason, "delivery": {"response_code": outcome.status, "error_kind": outcome.kind,
                                          "attempts": attempts, "failed_at": iso(now)}}
    return {**row, "b_status": "failed" if final else "pending", "b_attempts": attempts,
            "b_error": str(outcome)[:2000], "b_code": outcome.status, "b_reason": reason,
            "b_next": None if final else _retry_at(outcome, item.attempts, now)}


def record(outcomes: Sequence[tuple[_Claim, Sent | DeliveryError | Released]]) -> dict[int, dict[str, Any]]:
    """Write outcomes (one statement), each only if its record is still this claim's. Returns what
    happened to each record."""
    if not outcomes:
        return {}
    now = datetime.now(timezone.utc)
    rows = [_outcome_row(item, outcome, now) for item, outcome in outcomes]
    retry_on_conflict("record notification outcomes", lambda: _write(rows))
    results: dict[int, dict[str, Any]] = {}
    for (item, outcome), row in zip(outcomes, rows, strict=True):
        status = row["b_status"]
        if isinstance(outcome, Released):
            results[item.id] = {"id": item.id, "status": "released"}
            metrics.NOTIFICATION_RELEASED.inc()
            continue
        if isinstance(outcome, Sent):
            results[item.id] = {"id": item.id, "status": "sent", "response_code": outcome.status_code}
            continue
        results[item.id] = {"id": item.id, "status": "failed" if status == "failed" else "retrying",
                            "error": str(outcome)}
        if status == "failed":
            record_dead_letter(TASK_NAME, "notifications", [item.id], {"replay": True}, outcome, None, item.attempts)
            metrics.DEAD_LETTERS.labels(task=TASK_NAME).inc()
            log.error("notification failed for good; dead-lettered", extra={
                "delivery_id": item.id, "channel": item.channel, "error": str(outcome)[:300]})
        elif outcome.kind not in ("circuit_open", "rate_limited"):
            log.warning("notification attempt failed; will retry", extra={
                "delivery_id": item.id, "channel": item.channel, "attempt": item.attempts,
                "error": str(outcome)[:300]})
    return results


def _write(rows: list[dict[str, Any]]) -> None:
    with unit_of_work() as session:
        session.execute(_RECORD, rows)


# ---------------------------------------------------------------- runs

def _release(items: Iterable[_Claim], wait_secs: float) -> None:
    """Hand claims back unsent, due again after `wait_secs`, the attempt not spent."""
    now = datetime.now(timezone.utc)
    rows = [{**_outcome_row(i, Released("lane full"), now), "b_next": now + timedelta(seconds=wait_secs)}
            for i in items]
    if rows:
        retry_on_conflict("release notification deliveries", lambda: _write(rows))
        metrics.NOTIFICATION_RELEASED.inc(len(rows))


def deliver_due(budget_secs: float | None = None, ids: Sequence[int] | None = None) -> dict[str, Any]:
    """Claim and send due records until none is due (or the given `ids` are done), for at most
    `budget_secs` of claiming. Outcomes are written as they complete. Returns counts and, for
    `ids`, each record's result."""
    budget = run_budget_secs() if budget_secs is None else budget_secs
    deadline = time.monotonic() + budget
    pool = sender()
    outbound = get_outbound_settings()
    done: queue.SimpleQueue[tuple[_Claim, Any]] = queue.SimpleQueue()
    window = max(CLAIM_BATCH, send_threads() * 4)
    lane_cap = max(pool.per_target * 8, window)
    released_until = 0.0  # records this run handed back are due again then: the run is not done before
    in_flight, claimed_total, last_empty, drained = 0, 0, -1.0, False
    waiting: list[tuple[_Claim, Any]] = []
    results: dict[int, dict[str, Any]] = {}
    counts = {"claimed": 0, "sent": 0, "retrying": 0, "failed": 0, "released": 0}
    last_flush = time.monotonic()
    pending_ids = list(ids) if ids is not None else None
    while True:
        now_m = time.monotonic()
        may_claim = now_m < deadline and (pending_ids is None or pending_ids) and in_flight < window // 2 \
            and (last_empty < 0 or now_m - last_empty > 0.2)
        if may_claim:
            batch = claim(min(CLAIM_BATCH, window - in_flight), pending_ids)
            if pending_ids is not None:
                pending_ids = []
            drained = not batch
            if drained:
                last_empty = now_m
            claimed_total += len(batch)
            full: list[_Claim] = []
            for item in batch:
                if pool.queued(item.target) >= lane_cap:
                    full.append(item)  # its lane holds enough for a lease: let another run take it later
                    continue
                pool.submit(item, outbound, done)
                in_flight += 1
            if full:
                _release(full, 2.0)
                counts["released"] += len(full)
                released_until = time.monotonic() + 2.0
        try:
            waiting.append(done.get(timeout=FLUSH_SECS if in_flight else 0.001))
            while True:
                waiting.append(done.get_nowait())
        except queue.Empty:
            pass
        now_m = time.monotonic()
        if waiting and (len(waiting) >= CLAIM_BATCH or now_m - last_flush >= FLUSH_SECS or len(waiting) == in_flight):
            written = record(waiting)
            in_flight -= len(waiting)
            for result in written.values():
                key = result["status"]
                counts[key] = counts.get(key, 0) + 1
            if ids is not None:
                results.update(written)
            waiting = []
            last_flush = now_m
        if in_flight == 0 and (now_m >= deadline or (drained and last_empty > released_until) or pending_ids == []):
            break
    counts["claimed"] = claimed_total
    if counts["sent"]:
        log.info("notifications sent", extra={k: v for k, v in counts.items() if v})
    out: dict[str, Any] = dict(counts)
    if ids is not None:
        out["results"] = results
    return out


def deliver_run() -> dict[str, Any]:
    """One delivery run per process at a time (the beat-started `notifications.deliver_due`): a
    second run in a busy process returns at once; the sender pool is the process's either way."""
    if not _runs.acquire(blocking=False):
        return {"status": "busy"}
    try:
        return deliver_due()
    finally:
        _runs.release()


def posted_slack_messages(incident_id: str) -> set[tuple[str, str]]:
    """(channel, ts) of every Slack message the incident's sent posts left: the lifecycle records
    redraw these on a status change (app/services/lifecycle.py), so nothing else needs to."""
    with read_session() as session:
        posted = _references(session, {incident_id}).get((incident_id, "slack"), [])
    return {(m["channel"], m["ts"]) for m in posted}


def any_due(now: datetime | None = None) -> bool:
    now = now or datetime.now(timezone.utc)
    with read_session() as session:
        return bool(session.scalar(select(exists().where(
            _TABLE.c.status.in_(("pending", "sending")), _TABLE.c.next_attempt_at <= now))))


def backlog(now: datetime | None = None) -> dict[str, Any]:
    """The health signal: due records waiting to be sent and how long the oldest has waited."""
    from sqlalchemy import func

    now = now or datetime.now(timezone.utc)
    with read_session() as session:
        count, oldest = session.execute(select(func.count(), func.min(_TABLE.c.next_attempt_at)).where(
            _TABLE.c.status.in_(("pending", "sending")), _TABLE.c.next_attempt_at <= now)).one()
    age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
    return {"due": int(count or 0), "oldest_due_seconds": round(age, 1)}


def deliver(delivery_id: int, replay: bool = False) -> dict[str, Any]:
    """Send one record now if it is pending (or its claim's lease ran out); `replay` (the dead
    letter's) first gives a failed record one more round of attempts. Otherwise says its status
    (`held`: another worker's claim is live)."""
    if replay:
        with unit_of_work() as session:
            session.execute(update(_TABLE).where(_TABLE.c.id == delivery_id, _TABLE.c.status == "failed").values(
                status="pending", attempts=0, next_attempt_at=datetime.now(timezone.utc)))
    result = deliver_due(budget_secs=60, ids=[delivery_id])["results"].get(delivery_id)
    if result is not None:
        return result
    with read_session() as session:
        row = session.get(NotificationDelivery, delivery_id)
        if row is None:
            return {"id": delivery_id, "status": "missing"}
        return {"id": delivery_id, "status": "held" if row.status == "sending" else row.status}


def incident_notifications(incident_id: str) -> dict[str, Any]:
    """`GET /api/v1/incidents/{id}/notifications`: the incident's delivery records, oldest first
    (IncidentNotFound for an unknown id; a merged id answers for the incident it joined)."""
    from app.services.deliveries import deliveries_of
    from app.services.incidents import get_incident

    incident = get_incident(incident_id)
    with read_session() as session:
        return {"incident_id": incident["id"], "items": deliveries_of(session, incident["id"]), "next_cursor": None}
