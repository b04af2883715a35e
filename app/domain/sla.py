"""SLA targets per severity and deadline math."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

# Resolve targets are the contract's defaults; acknowledge targets follow common on-call practice.
RESOLVE_TARGET_SECS = {"P0": 15 * 60, "P1": 3600, "P2": 4 * 3600, "P3": 24 * 3600, "P4": 72 * 3600}
ACK_TARGET_SECS = {"P0": 5 * 60, "P1": 15 * 60, "P2": 3600, "P3": 4 * 3600, "P4": 24 * 3600}


@dataclass(frozen=True)
class SlaDeadlines:
    acknowledge_by: datetime
    resolve_by: datetime


_TARGETS = {severity: (timedelta(seconds=ACK_TARGET_SECS[severity]), timedelta(seconds=RESOLVE_TARGET_SECS[severity]))
            for severity in RESOLVE_TARGET_SECS}


def deadlines(severity: str, created_at: datetime) -> SlaDeadlines:
    acknowledge_in, resolve_in = _TARGETS[severity]
    return SlaDeadlines(acknowledge_by=created_at + acknowledge_in, resolve_by=created_at + resolve_in)


def deadline_fields(severity: str, created_at: datetime) -> dict[str, datetime]:
    """The incident fields an SLA sets, as creation and every later severity change write them:
    the deadlines always run from creation, at the current severity's targets."""
    due = deadlines(severity, created_at)
    return {"sla_acknowledge_by": due.acknowledge_by, "sla_resolve_by": due.resolve_by}
