"""The incident state machine."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    NEW = "NEW"
    ACKNOWLEDGED = "ACKNOWLEDGED"
    IN_PROGRESS = "IN_PROGRESS"
    ESCALATED = "ESCALATED"
    RESOLVED = "RESOLVED"
    CLOSED = "CLOSED"


ACTIVE_STATUSES = (Status.NEW, Status.ACKNOWLEDGED, Status.IN_PROGRESS, Status.ESCALATED)
TERMINAL_STATUSES = (Status.RESOLVED, Status.CLOSED)

# Allowed transitions. Repeating a state is not a transition (resolving a RESOLVED incident is 409).
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.NEW: frozenset({Status.ACKNOWLEDGED, Status.IN_PROGRESS, Status.ESCALATED, Status.RESOLVED, Status.CLOSED}),
    Status.ACKNOWLEDGED: frozenset({Status.IN_PROGRESS, Status.ESCALATED, Status.RESOLVED, Status.CLOSED}),
    Status.IN_PROGRESS: frozenset({Status.ACKNOWLEDGED, Status.ESCALATED, Status.RESOLVED, Status.CLOSED}),
    Status.ESCALATED: frozenset({Status.ACKNOWLEDGED, Status.IN_PROGRESS, Status.RESOLVED, Status.CLOSED}),
    Status.RESOLVED: frozenset({Status.CLOSED, Status.IN_PROGRESS}),  # reopen goes back to work
    Status.CLOSED: frozenset(),
}


class DomainError(Exception):
    """Base of the domain's errors; the API maps each subclass to one status code."""


class IllegalTransition(DomainError):
    def __init__(self, incident_id: str, current: str, target: str) -> None:
        super().__init__(f"incident {incident_id} cannot go from {current} to {target}")
        self.incident_id = incident_id
        self.current = current
        self.target = target


class IncidentNotFound(DomainError):
    def __init__(self, incident_id: str) -> None:
        super().__init__(f"incident {incident_id} not found")
        self.incident_id = incident_id


def is_active(status: str) -> bool:
    return status in {s.value for s in ACTIVE_STATUSES}


def check_transition(incident_id: str, current: str, target: str) -> None:
    """Raise IllegalTransition unless current -> target is allowed."""
    try:
        allowed = TRANSITIONS[Status(current)]
        wanted = Status(target)
    except ValueError:
        raise IllegalTransition(incident_id, current, target) from None
    if wanted not in allowed:
        raise IllegalTransition(incident_id, current, target)
