"""SQLAlchemy 2.0 models of the core tables. Other concepts keep their models in their own modules
(importing `Base` from here); `app.adapters.db.import_all_models()` loads them all for Alembic."""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from app.domain.incident import ACTIVE_STATUSES, status_in_sql

JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite has no BIGINT autoincrement; INTEGER PRIMARY KEY is its 64-bit rowid.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")

# The partial unique index's predicate and ingest's ON CONFLICT target must match it verbatim.
ACTIVE_STATUS_SQL = status_in_sql(ACTIVE_STATUSES)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Optional[datetime], dialect: Any) -> Optional[datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Optional[datetime], dialect: Any) -> Optional[datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # HMAC-SHA256 hex of the whole key
    permissions: Mapped[list[Any]] = mapped_column(JSONType)
    requests_per_minute: Mapped[int] = mapped_column(Integer)
    burst: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)


class Incident(Base):
    __tablename__ = "incidents"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    title: Mapped[str] = mapped_column(String(500))
    description: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(100), index=True)
    event_type: Mapped[Optional[str]] = mapped_column(String(100), nullable=True)
    category: Mapped[Optional[str]] = mapped_column(String(100), nullable=True, index=True)
    severity: Mapped[str] = mapped_column(String(2), index=True)
    source_severity: Mapped[Optional[str]] = mapped_column(String(50), nullable=True)
    predicted_severity: Mapped[Optional[str]] = mapped_column(String(2), nullable=True)
    predicted_category: Mapped[Optional[str]] = mapped_column(String(100), nullable=True)
    confidence: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    model_version: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    # Who decided `severity` (app.domain.severity.severity_reason); migration 0005.
    severity_reason: Mapped[dict[str, Any]] = mapped_column(
        JSONType, server_default=text('\'{"decided_by": "source"}\''))
    status: Mapped[str] = mapped_column(String(16), default="NEW", index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    event_count: Mapped[int] = mapped_column(Integer, default=1)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)  # covered by ix_incidents_created_id
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    assignee: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    team: Mapped[Optional[str]] = mapped_column(String(200), nullable=True, index=True)
    escalation_policy: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    service: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    resource: Mapped[Optional[dict[str, Any]]] = mapped_column(JSONType, nullable=True)
    metrics: Mapped[Optional[dict[str, Any]]] = mapped_column(JSONType, nullable=True)
    tags: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    acknowledged_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    acknowledged_by: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    resolved_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    resolved_by: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    resolution_method: Mapped[Optional[str]] = mapped_column(String(50), nullable=True)
    resolution_notes: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    root_cause: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    actions_taken: Mapped[Optional[list[Any]]] = mapped_column(JSONType, nullable=True)
    closed_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    merged_into: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    sla_acknowledge_by: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    sla_resolve_by: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    sla_acknowledge_breached: Mapped[bool] = mapped_column(Boolean, default=False)
    sla_resolve_breached: Mapped[bool] = mapped_column(Boolean, default=False)
    next_escalation_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    escalation_level: Mapped[int] = mapped_column(Integer, default=0)
    escalation_token: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    enrichment: Mapped[Optional[dict[str, Any]]] = mapped_column(JSONType, nullable=True)
    correlation_group_id: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    processed_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        # Never two active incidents for one fingerprint, whatever the concurrency.
        Index(
            "uq_incidents_active_fingerprint",
            "fingerprint",
            unique=True,
            postgresql_where=text(ACTIVE_STATUS_SQL),
            sqlite_where=text(ACTIVE_STATUS_SQL),
        ),
        Index("ix_incidents_created_id", "created_at", "id"),
    )


# The one order in which a transaction takes several incident row locks: fingerprint, then id
# (docs/foundation.md, "Lock order"). Ingest's upsert locks the open incidents it merges into in
# fingerprint order (it knows fingerprints, not ids); every other statement that locks several
# incidents sorts them the same way, so two writers never wait on each other in a cycle.
INCIDENT_LOCK_ORDER = (Incident.fingerprint, Incident.id)


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(100))
    event_id: Mapped[str] = mapped_column(String(200))
    incident_id: Mapped[str] = mapped_column(String(32), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[Optional[str]] = mapped_column(String(100), nullable=True)
    severity: Mapped[Optional[str]] = mapped_column(String(50), nullable=True)
    title: Mapped[str] = mapped_column(String(500))
    occurred_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)  # exactly as received
    encrypted_payload: Mapped[Optional[bytes]] = mapped_column(LargeBinary, nullable=True)
    processed_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (UniqueConstraint("source", "event_id", name="uq_events_source_event_id"),)


class TimelineEntry(Base):
    __tablename__ = "incident_timeline"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    incident_id: Mapped[str] = mapped_column(String(32), ForeignKey("incidents.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(50))
    field: Mapped[Optional[str]] = mapped_column(String(100), nullable=True)
    old_value: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    new_value: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    details: Mapped[Optional[dict[str, Any]]] = mapped_column(JSONType, nullable=True)


class OutboxMessage(Base):
    """Work committed in the same transaction as the data it concerns; the relay re-sends what
    never reached (or never finished on) a worker."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(50))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    dispatched_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    done_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        Index(
            "ix_outbox_pending",
            "created_at",
            postgresql_where=text("done_at IS NULL"),
            sqlite_where=text("done_at IS NULL"),
        ),
    )


class DeadLetter(Base):
    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    task_name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[Optional[str]] = mapped_column(String(50), nullable=True)
    args: Mapped[list[Any]] = mapped_column(JSONType)
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSONType)
    error: Mapped[str] = mapped_column(Text)
    traceback: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    replayed_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)


class IncidentDayCounter(Base):
    """Per-day incident sequence on SQLite (Postgres uses one SEQUENCE per day instead)."""

    __tablename__ = "incident_day_counters"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    last: Mapped[int] = mapped_column(Integer)
