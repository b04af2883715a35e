"""Per-request loaders: what hangs off incidents is fetched for every incident the request has seen
at once, not once per incident (no N+1).

GraphQL executes synchronously here (gevent workers), so there is no event-loop tick to collect
keys in, as a classic DataLoader does. Instead every resolver that produces incidents `prime`s
the loaders with their ids; the first `load` of any key then fetches all primed keys in one batch
(app/services/incident_reads.py) and later loads are answered from the request's cache. A page of
100 incidents with timeline, events and correlation group therefore runs the same handful of
statements as a page of 10."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Hashable, Iterable, Mapping, TypeVar

from app.services import incident_reads
from app.services.auth import Principal

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Loader(Generic[K, V]):
    """Keys primed by parents are fetched together on the first load; results are cached."""

    def __init__(self, fetch: Callable[[list[K]], Mapping[K, V]], default: Callable[[], V]) -> None:
        self._fetch = fetch
        self._default = default
        self._pending: set[K] = set()
        self._cache: dict[K, V] = {}
        self.batches = 0

    def prime(self, keys: Iterable[K]) -> None:
        self._pending.update(k for k in keys if k is not None and k not in self._cache)

    def put(self, key: K, value: V) -> None:
        self._cache[key] = value
        self._pending.discard(key)

    def load(self, key: K) -> V:
        if key not in self._cache:
            keys = sorted(self._pending | {key}, key=str)
            self._pending.clear()
            found = self._fetch(keys)
            self.batches += 1
            for k in keys:
                self._cache[k] = found[k] if k in found else self._default()
        return self._cache[key]


@dataclass
class Loaders:
    incidents: Loader[str, dict[str, Any] | None] = field(
        default_factory=lambda: Loader(incident_reads.incidents_by_id, lambda: None))
    timelines: Loader[str, list[dict[str, Any]]] = field(
        default_factory=lambda: Loader(incident_reads.timelines, list))
    groups_of: Loader[str, dict[str, Any] | None] = field(
        default_factory=lambda: Loader(incident_reads.groups_of, lambda: None))
    groups: Loader[str, dict[str, Any] | None] = field(
        default_factory=lambda: Loader(incident_reads.groups_by_id, lambda: None))
    members: Loader[str, list[dict[str, Any]]] = field(
        default_factory=lambda: Loader(incident_reads.group_members, list))
    assignees: Loader[str, dict[str, Any] | None] = field(
        default_factory=lambda: Loader(incident_reads.assignees, lambda: None))
    _events: dict[int, Loader[str, list[dict[str, Any]]]] = field(default_factory=dict)
    _seen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # What a batch finds primes the next level: every group's members, every member's incident.
        self.groups_of = Loader(self._groups_of, lambda: None)
        self.members = Loader(self._members, list)

    def _groups_of(self, ids: list[str]) -> Mapping[str, dict[str, Any] | None]:
        found = incident_reads.groups_of(ids)
        self.members.prime(g["id"] for g in found.values() if g)
        return found

    def _members(self, group_ids: list[str]) -> Mapping[str, list[dict[str, Any]]]:
        found = incident_reads.group_members(group_ids)
        self.incidents.prime(m["incident_id"] for members in found.values() for m in members)
        return found

    def events(self, per_incident: int) -> Loader[str, list[dict[str, Any]]]:
        """One loader per page size asked for (`events(first: N)`), primed with every incident seen."""
        loader = self._events.get(per_incident)
        if loader is None:
            loader = Loader(lambda ids: incident_reads.events(ids, per_incident), list)
            loader.prime(self._seen)
            self._events[per_incident] = loader
        return loader

    def seen(self, incidents: Iterable[Mapping[str, Any] | None]) -> None:
        """Incidents the response will show: their nested fields load together."""
        rows = [i for i in incidents if i]
        ids = [str(i["id"]) for i in rows]
        self._seen.extend(ids)
        for row in rows:
            self.incidents.put(str(row["id"]), dict(row))
        self.timelines.prime(ids)
        self.groups_of.prime(ids)
        for events in self._events.values():
            events.prime(ids)
        self.assignees.prime(str(i["assignee"]) for i in rows if i.get("assignee"))


@dataclass
class GraphQLContext:
    """What every resolver sees as `info.context`."""

    principal: Principal | None
    loaders: Loaders = field(default_factory=Loaders)
    cache: dict[Any, Any] = field(default_factory=dict)  # per-request memo (incidentMetrics calls)
