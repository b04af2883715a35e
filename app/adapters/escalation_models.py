"""Escalation tables: people (users, teams), on-call schedules, escalation policies, the policy
snapshot each escalating incident carries, and the notification delivery records the engine
writes. See docs/escalation.md."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import Float, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.adapters.models import Base, BigIntPK, Incident, JSONType, UTCDateTime, utcnow

# Open incidents whose SLA flag is not set yet: what `sla.check` scans (partial indexes below).
SLA_ACK_OPEN_SQL = "sla_acknowledge_breached = false AND acknowledged_at IS NULL AND resolved_at IS NULL"
SLA_RESOLVE_OPEN_SQL = "sla_resolve_breached = false AND resolved_at IS NULL"
ANALYTICS_INCLUDE = ("severity", "category", "team", "source", "status", "acknowledged_at", "resolved_at",
                     "sla_acknowledge_breached", "sla_resolve_breached", "merged_into")


class User(Base):
    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    full_name: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    email: Mapped[Optional[str]] = mapped_column(String(320), nullable=True)
    phone: Mapped[Optional[str]] = mapped_column(String(40), nullable=True)
    contact: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)  # channel -> address
    time_zone: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Team(Base):
    __tablename__ = "teams"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    members: Mapped[list[Any]] = mapped_column(JSONType, default=list)  # user names
    schedule: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    escalation_policy: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Schedule(Base):
    __tablename__ = "schedules"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    time_zone: Mapped[str] = mapped_column(String(64))
    layers: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    overrides: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EscalationPolicy(Base):
    __tablename__ = "escalation_policies"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    levels: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    repeat: Mapped[int] = mapped_column(Integer, default=0)
    conditions: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IncidentEscalation(Base):
    """The policy as it was when the incident's escalation started (a later edit of the policy
    never changes an incident mid-escalation) and the run state the incident row does not hold."""

    __tablename__ = "incident_escalations"

    incident_id: Mapped[str] = mapped_column(String(32), primary_key=True)  # no FK: see migration 0006
    policy_name: Mapped[str] = mapped_column(String(200))
    policy_version: Mapped[int] = mapped_column(Integer)
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSONType)
    cycle: Mapped[int] = mapped_column(Integer, default=0)  # completed passes through the levels
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    paused_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    paused_remaining_secs: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    exhausted_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotificationDelivery(Base):
    """One page: one target (a user) on one channel for one escalation step. Written `pending` by
    the escalation engine; the notifications work sends it and fills status/attempts/last_error."""

    __tablename__ = "notification_deliveries"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    incident_id: Mapped[str] = mapped_column(String(32))
    escalation_token: Mapped[str] = mapped_column(String(64))
    step: Mapped[str] = mapped_column(String(40))  # "c<cycle>.l<level>"
    level: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(50))
    target_type: Mapped[str] = mapped_column(String(20))  # what the level named: user/team/schedule/policy
    target_id: Mapped[str] = mapped_column(String(200))
    recipient: Mapped[str] = mapped_column(String(200))  # the user paged
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    idempotency_key: Mapped[str] = mapped_column(String(200))  # incident:step:recipient:channel
    reason: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # pending: when it is due; sending: when the claim's lease runs out (then it is due again)
    next_attempt_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    response_code: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)  # the receiver's last answer

    __table_args__ = (
        # One page per step, recipient and channel; also the index of an incident's deliveries.
        Index("uq_notification_deliveries_step", "incident_id", "step", "recipient", "channel", unique=True),
        Index("ix_notification_deliveries_due", "next_attempt_at",
              postgresql_where=text("status IN ('pending', 'sending')"),
              sqlite_where=text("status IN ('pending', 'sending')")),
    )


# Indexes on the incidents table that the escalation sweep, the SLA check and the analytics read.
_incidents = Incident.__table__
Index("ix_incidents_next_escalation", _incidents.c.next_escalation_at, _incidents.c.id,
      postgresql_where=text("next_escalation_at IS NOT NULL"), sqlite_where=text("next_escalation_at IS NOT NULL"))
Index("ix_incidents_sla_ack_open", _incidents.c.sla_acknowledge_by,
      postgresql_where=text(SLA_ACK_OPEN_SQL), sqlite_where=text(SLA_ACK_OPEN_SQL))
Index("ix_incidents_sla_resolve_open", _incidents.c.sla_resolve_by,
      postgresql_where=text(SLA_RESOLVE_OPEN_SQL), sqlite_where=text(SLA_RESOLVE_OPEN_SQL))
# Analytics over a created_at range reads only the index (Postgres: an index-only scan).
Index("ix_incidents_analytics", _incidents.c.created_at, postgresql_include=list(ANALYTICS_INCLUDE))
