"""What an ingest writes, as data: the plan (incident, event and timeline rows of a batch) and how
to read a writer's outcome back into one result per event. Pure: no I/O, no settings (the service
builds the plan, `app/adapters/ingest_*.py` write it; docs/foundation.md, "Ingest")."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Mapping

PIPELINE_OUTBOX_KIND = "pipeline"
# The fields of an opened incident announced on the change bus.
PUBLISHED_FIELDS = ("id", "title", "description", "source", "event_type", "category", "severity", "status",
                    "created_at", "updated_at", "team", "service", "tags")

EventKey = tuple[str, str]  # (source, event_id): unique among stored events


@dataclass(frozen=True)
class IngestResult:
    status: str  # accepted | duplicate | rejected
    event_id: str
    incident_id: str | None = None
    created: bool = False  # this event opened a new incident
    error: dict[str, Any] | None = None


@dataclass
class NewEvent:
    """A validated event, as every door hands it to ingest."""

    source: str
    event_id: str
    title: str
    raw: Mapping[str, Any]
    event_type: str | None = None
    category: str | None = None
    description: str = ""
    severity: str | None = None
    timestamp: datetime | None = None
    resource: Mapping[str, Any] | None = None
    metrics: Mapping[str, Any] | None = None
    tags: Mapping[str, Any] = field(default_factory=dict)
    service: str | None = None
    dedup_key: str | None = None
    encrypted_payload: bytes | None = None
    # A door may force the incident's severity (e.g. a manual incident created as P2).
    severity_override: str | None = None
    team: str | None = None
    escalation_policy: str | None = None
    # A manual incident may name its assignee, set in the same transaction as the incident (also on
    # the active incident it joins); `requested_by`, the caller, is that assignment's actor.
    assignee: str | None = None
    requested_by: str | None = None

    @property
    def key(self) -> EventKey:
        return (self.source, self.event_id)

    def fingerprint_input(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "event_type": self.event_type,
            "title": self.title,
            "resource": self.resource,
            "service": self.service,
            "tags": self.tags,
            "dedup_key": self.dedup_key,
        }


@dataclass(frozen=True)
class IncidentDraft:
    """One fingerprint of the batch: the incident row it opens if no active incident has that
    fingerprint (every column but `id`, which the writer draws), and the timeline rows to write in
    either case (without `incident_id`). A `merge_only` draft is for a fingerprint believed to have
    an active incident: its row holds only what a merge writes (MERGE_COLUMNS), and `on_create` is
    empty; the writer refuses to open an incident from it (`WriteOutcome.not_open`)."""

    fingerprint: str
    row: dict[str, Any]
    on_create: list[dict[str, Any]]
    on_merge: list[dict[str, Any]]
    positions: tuple[int, ...]  # batch positions of its fresh events; the first opens the incident
    merge_only: bool = False


# What joining an active incident writes to it (besides the timeline): a merge-only draft's row.
MERGE_COLUMNS = ("fingerprint", "event_count", "first_seen", "last_seen", "updated_at")


@dataclass(frozen=True)
class IngestPlan:
    """The writes of one batch. `incidents` is sorted by fingerprint: every writer takes the
    incident rows' locks in that order, the one global order that keeps concurrent batches from
    deadlocking. `events` rows carry their `fingerprint`; the writer fills in `incident_id`."""

    now: datetime
    day: date
    keys: tuple[EventKey, ...]  # every submitted event, in input order
    incidents: list[IncidentDraft]
    events: list[dict[str, Any]]
    stored: Mapping[EventKey, str]  # stored before this batch -> their incident id
    outbox_kind: str = PIPELINE_OUTBOX_KIND

    @property
    def empty(self) -> bool:
        return not self.events

    def by_arrival(self) -> list[IncidentDraft]:
        """The drafts in the order of their first events: incident numbers are drawn in this order
        (the batch's first event opens the lowest-numbered incident); locks follow `incidents`."""
        return sorted(self.incidents, key=lambda draft: draft.positions[0])


@dataclass(frozen=True)
class WriteOutcome:
    """What a writer did with a plan. `stored_found` non-empty means it wrote NOTHING: those events
    were stored before (answer them as duplicates and plan again without them). `not_open` means
    it wrote NOTHING either: a merge-only draft's fingerprint had no active incident any more (it
    was resolved meanwhile); plan again with full drafts."""

    incidents: Mapping[str, tuple[str, bool]] = field(default_factory=dict)  # fingerprint -> (id, created)
    outbox_ids: tuple[int, ...] = ()
    stored_found: Mapping[EventKey, str] = field(default_factory=dict)
    not_open: bool = False


def results(plan: IngestPlan, outcome: WriteOutcome) -> list[IngestResult]:
    """One result per submitted event, in input order: `accepted` with its incident, or
    `duplicate` (stored before, or repeated within the batch) with the incident it went to."""
    answered: dict[EventKey, IngestResult] = {}
    for draft in plan.incidents:
        incident_id, created = outcome.incidents[draft.fingerprint]
        for n, position in enumerate(draft.positions):
            key = plan.keys[position]
            answered[key] = IngestResult("accepted", key[1], incident_id, created=created and n == 0)
    out: list[IngestResult] = []
    seen: set[EventKey] = set()
    for key in plan.keys:
        if key in seen or key in plan.stored:
            out.append(IngestResult("duplicate", key[1],
                                    plan.stored[key] if key in plan.stored else answered[key].incident_id))
        else:
            out.append(answered[key])
        seen.add(key)
    return out


def opened(plan: IngestPlan, outcome: WriteOutcome) -> list[dict[str, Any]]:
    """The incidents this batch opened, as announced on the change bus."""
    out = []
    for draft in plan.incidents:
        incident_id, created = outcome.incidents[draft.fingerprint]
        if created:
            out.append({name: incident_id if name == "id" else draft.row[name] for name in PUBLISHED_FIELDS})
    return out
