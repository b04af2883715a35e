"""SLA targets per severity and deadline math."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Mapping

# Resolve targets are the contract's defaults; acknowledge targets follow common on-call practice.
# config.yaml's `sla:` section overrides any of them (docs/escalation.md).
RESOLVE_TARGET_SECS = {"P0": 15 * 60, "P1": 3600, "P2": 4 * 3600, "P3": 24 * 3600, "P4": 72 * 3600}
ACK_TARGET_SECS = {"P0": 5 * 60, "P1": 15 * 60, "P2": 3600, "P3": 4 * 3600, "P4": 24 * 3600}


@dataclass(frozen=True)
class SlaDeadlines:
    acknowledge_by: datetime
    resolve_by: datetime


@dataclass(frozen=True)
class SlaTargets:
    """Seconds to acknowledge and to resolve, per severity."""

    acknowledge_secs: Mapping[str, int]
    resolve_secs: Mapping[str, int]


def targets(acknowledge_secs: Mapping[str, int] | None = None,
            resolve_secs: Mapping[str, int] | None = None) -> SlaTargets:
    """The default targets with the given severities' targets replaced."""
    return SlaTargets({**ACK_TARGET_SECS, **(acknowledge_secs or {})}, {**RESOLVE_TARGET_SECS, **(resolve_secs or {})})


DEFAULT_TARGETS = targets()


def deadlines(severity: str, created_at: datetime, sla_targets: SlaTargets = DEFAULT_TARGETS) -> SlaDeadlines:
    return SlaDeadlines(acknowledge_by=created_at + timedelta(seconds=sla_targets.acknowledge_secs[severity]),
                        resolve_by=created_at + timedelta(seconds=sla_targets.resolve_secs[severity]))


def deadline_fields(severity: str, created_at: datetime,
                    sla_targets: SlaTargets = DEFAULT_TARGETS) -> dict[str, datetime]:
    """The incident fields an SLA sets, as creation and every later severity change write them:
    the deadlines always run from creation, at the current severity's targets."""
    due = deadlines(severity, created_at, sla_targets)
    return {"sla_acknowledge_by": due.acknowledge_by, "sla_resolve_by": due.resolve_by}
