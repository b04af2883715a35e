"""Playbook tables: definitions (by name), runs, and one row per step of a run. A run carries the
playbook as it was when it started (later edits never change a run in flight). docs/playbooks.md."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import Boolean, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.adapters.models import Base, BigIntPK, JSONType, UTCDateTime, utcnow

# Runs the sweep looks at: not finished, not parked at the approval gate.
RUN_OPEN_SQL = "status IN ('queued','running')"


class Playbook(Base):
    __tablename__ = "playbooks"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    triggers: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    steps: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PlaybookRun(Base):
    __tablename__ = "playbook_runs"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    playbook: Mapped[str] = mapped_column(String(200))
    playbook_version: Mapped[int] = mapped_column(Integer, default=1)
    definition: Mapped[dict[str, Any]] = mapped_column(JSONType)  # {triggers, steps} when the run started
    incident_id: Mapped[str] = mapped_column(String(32), index=True)
    trigger: Mapped[str] = mapped_column(String(10))  # auto | manual
    actor: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    resume_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)  # a wait or a retry's backoff
    next_check_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the sweep re-sends the run after this
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    cancelled_by: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)

    __table_args__ = (
        Index("ix_playbook_runs_open", "next_check_at",
              postgresql_where=text(RUN_OPEN_SQL), sqlite_where=text(RUN_OPEN_SQL)),
        # An incident's automatic run of a playbook happens once, whatever replays the pipeline does.
        Index("uq_playbook_runs_auto", "incident_id", "playbook", unique=True,
              postgresql_where=text("\"trigger\" = 'auto'"), sqlite_where=text("\"trigger\" = 'auto'")),
    )


class PlaybookStepRun(Base):
    __tablename__ = "playbook_step_runs"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(BigIntPK)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(30))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    output: Mapped[Optional[dict[str, Any]]] = mapped_column(JSONType, nullable=True)
    error: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    lease_until: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)  # a running attempt's claim
    approved_by: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    approved_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, nullable=True)
    duration_ms: Mapped[Optional[float]] = mapped_column(nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("run_id", "position", name="uq_playbook_step_runs_position"),)
