"""Tables of the pipeline: the service catalog and correlation groups (with their members)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.adapters.models import Base, JSONType, UTCDateTime, utcnow


class Service(Base):
    """A service of the catalog: who owns it, how critical it is, what it needs, how to fix it."""

    __tablename__ = "services"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    owner_team: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    tier: Mapped[Optional[str]] = mapped_column(String(20), nullable=True)
    dependencies: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    runbook_url: Mapped[Optional[str]] = mapped_column(String(2000), nullable=True)
    escalation_policy: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    # name -> PromQL template; `{service}` is replaced by the service name.
    metrics_queries: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    tags: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CorrelationGroup(Base):
    """Related incidents: a root (the earliest), members, the best score and why they match."""

    __tablename__ = "correlation_groups"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    root_incident_id: Mapped[str] = mapped_column(String(32), index=True)
    score: Mapped[float] = mapped_column(Float, default=0.0)
    reasons: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    member_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CorrelationMember(Base):
    """An incident belongs to at most one group (the primary key makes joining idempotent)."""

    __tablename__ = "correlation_group_members"

    incident_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    group_id: Mapped[str] = mapped_column(String(40), index=True)
    score: Mapped[float] = mapped_column(Float, default=0.0)
    reasons: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
