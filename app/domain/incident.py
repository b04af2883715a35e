"""The incident state machine, and the one definition of the status names (docs/foundation.md,
"One definition each")."""

from __future__ import annotations

from enum import Enum
from typing import Callable, Iterable, Protocol, TypeVar


class Status(str, Enum):
    NEW = "NEW"
    ACKNOWLEDGED = "ACKNOWLEDGED"
    IN_PROGRESS = "IN_PROGRESS"
    ESCALATED = "ESCALATED"
    RESOLVED = "RESOLVED"
    CLOSED = "CLOSED"


ACTIVE_STATUSES = (Status.NEW, Status.ACKNOWLEDGED, Status.IN_PROGRESS, Status.ESCALATED)
TERMINAL_STATUSES = (Status.RESOLVED, Status.CLOSED)
# The names as plain strings, for schemas, queries and wire formats.
STATUS_NAMES: tuple[str, ...] = tuple(s.value for s in Status)
ACTIVE_STATUS_NAMES: tuple[str, ...] = tuple(s.value for s in ACTIVE_STATUSES)


def status_in_sql(statuses: Iterable[Status], column: str = "status") -> str:
    """`status IN ('NEW',...)` as SQL text, for predicates that must be literal (a partial index,
    an ON CONFLICT target): derived from the enum, so it cannot drift from it."""
    return f"{column} IN ({','.join(repr(s.value) for s in statuses)})"

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
    return status in ACTIVE_STATUS_NAMES


# A merge chain longer than this is a cycle or corruption: treated as not found, never looped on.
MAX_MERGE_HOPS = 10


class Mergeable(Protocol):
    @property
    def merged_into(self) -> str | None: ...


M = TypeVar("M", bound=Mergeable)


def follow_merges(incident_id: str, load: Callable[[str], M | None]) -> M | None:
    """The incident `incident_id` ends up in after following `merged_into` (itself when not merged);
    None when an incident on the way is missing or the chain is longer than MAX_MERGE_HOPS. `load`
    reads one incident (from the database, a batch's rows, or both)."""
    current = incident_id
    for _ in range(MAX_MERGE_HOPS):
        incident = load(current)
        if incident is None or not incident.merged_into:
            return incident
        current = incident.merged_into
    return None


def check_transition(incident_id: str, current: str, target: str) -> None:
    """Raise IllegalTransition unless current -> target is allowed."""
    try:
        allowed = TRANSITIONS[Status(current)]
        wanted = Status(target)
    except ValueError:
        raise IllegalTransition(incident_id, current, target) from None
    if wanted not in allowed:
        raise IllegalTransition(incident_id, current, target)
