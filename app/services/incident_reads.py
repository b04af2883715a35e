"""Batched reads of what hangs off incidents: timelines, events, correlation groups and members,
assignees, incidents by id. Each takes many keys and runs a fixed number of statements, so a
GraphQL query of a page of incidents with nested fields costs the same few statements whatever
the page size (api/graphql/loaders.py calls these; docs/graphql.md, "No N+1"). Every row is
rendered by the same function REST uses."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from sqlalchemy import func, or_, select

from app.adapters.db import read_session
from app.adapters.escalation_models import User
from app.adapters.models import Event, Incident, TimelineEntry
from app.adapters.pipeline_models import CorrelationGroup, CorrelationMember
from app.services.correlation import group_to_dict
from app.services.incidents import event_to_dict, incident_to_dict, timeline_to_dict


def incidents_by_id(ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The incidents among `ids` (one statement). Merged ones are returned as stored."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    with read_session() as session:
        return {i.id: incident_to_dict(i) for i in session.scalars(select(Incident).where(Incident.id.in_(wanted)))}


def _with_merged(session: Any, ids: list[str]) -> dict[str, str]:
    """incident id -> the listed incident it belongs to (itself, or the one it was merged into)."""
    owner = {i: i for i in ids}
    for child, parent in session.execute(select(Incident.id, Incident.merged_into)
                                         .where(Incident.merged_into.in_(ids))):
        owner[child] = parent
    return owner


def timelines(ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Each incident's timeline, oldest first, including the rows of incidents merged into it
    (as GET /api/v1/incidents/{id}/timeline). Two statements."""
    wanted = sorted(set(ids))
    out: dict[str, list[dict[str, Any]]] = {i: [] for i in wanted}
    if not wanted:
        return out
    with read_session() as session:
        owner = _with_merged(session, wanted)
        rows = session.scalars(select(TimelineEntry).where(TimelineEntry.incident_id.in_(sorted(owner)))
                               .order_by(TimelineEntry.at, TimelineEntry.id))
        for row in rows:
            out[owner[row.incident_id]].append(timeline_to_dict(row))
    return out


def events(ids: Iterable[str], per_incident: int) -> dict[str, list[dict[str, Any]]]:
    """The first `per_incident` events of each incident (by id, merged incidents' events included,
    as GET /api/v1/incidents/{id}/events). Two statements: a window function limits each incident."""
    wanted = sorted(set(ids))
    out: dict[str, list[dict[str, Any]]] = {i: [] for i in wanted}
    if not wanted:
        return out
    with read_session() as session:
        owner = _with_merged(session, wanted)
        members = sorted(owner)
        if len(members) == len(wanted):  # no merges: rank within each incident
            rank = func.row_number().over(partition_by=Event.incident_id, order_by=Event.id).label("rank")
            ranked = select(Event.id, rank).where(Event.incident_id.in_(members)).subquery()
            query = select(Event).join(ranked, ranked.c.id == Event.id).where(ranked.c.rank <= per_incident)
            for row in session.scalars(query.order_by(Event.id)):
                out[owner[row.incident_id]].append(event_to_dict(row))
        else:  # merged children count toward their parent: rank in Python over the same rows
            for row in session.scalars(select(Event).where(Event.incident_id.in_(members)).order_by(Event.id)):
                bucket = out[owner[row.incident_id]]
                if len(bucket) < per_incident:
                    bucket.append(event_to_dict(row))
    return out


def groups_of(ids: Iterable[str]) -> dict[str, dict[str, Any] | None]:
    """Each incident's correlation group (without members), or None. Two statements."""
    wanted = sorted(set(ids))
    out: dict[str, dict[str, Any] | None] = {i: None for i in wanted}
    if not wanted:
        return out
    with read_session() as session:
        membership = {row[0]: row[1] for row in session.execute(
            select(CorrelationMember.incident_id, CorrelationMember.group_id)
            .where(CorrelationMember.incident_id.in_(wanted)))}
        if not membership:
            return out
        groups = {g.id: group_to_dict(g) for g in session.scalars(
            select(CorrelationGroup).where(CorrelationGroup.id.in_(sorted(set(membership.values())))))}
    for incident_id, group_id in membership.items():
        out[incident_id] = groups.get(group_id)
    return out


def groups_by_id(ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    with read_session() as session:
        return {g.id: group_to_dict(g) for g in session.scalars(
            select(CorrelationGroup).where(CorrelationGroup.id.in_(wanted)))}


def group_members(group_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Each group's members (incident_id, score, reasons, added_at, root), in joining order.
    One statement; the member incidents themselves are loaded by `incidents_by_id`."""
    wanted = sorted(set(group_ids))
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if not wanted:
        return {}
    with read_session() as session:
        roots = {row[0]: row[1] for row in session.execute(
            select(CorrelationGroup.id, CorrelationGroup.root_incident_id).where(CorrelationGroup.id.in_(wanted)))}
        for member in session.scalars(select(CorrelationMember).where(CorrelationMember.group_id.in_(wanted))
                                      .order_by(CorrelationMember.added_at, CorrelationMember.incident_id)):
            body = group_to_dict(CorrelationGroup(id=member.group_id, root_incident_id=roots.get(member.group_id)),
                                 [member])["members"][0]
            out[member.group_id].append(body)
    return {g: out.get(g, []) for g in wanted}


def assignees(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """`assignedTo` of each assignee: the configured user with that name or e-mail address, else
    the bare name (and the address when the assignee is one). One statement."""
    wanted = sorted({n for n in names if n})
    if not wanted:
        return {}
    found: dict[str, dict[str, Any]] = {}
    with read_session() as session:
        for user in session.scalars(select(User).where(or_(User.name.in_(wanted), User.email.in_(wanted)))):
            body = {"name": user.full_name or user.name, "username": user.name, "email": user.email}
            for key in (user.name, user.email):
                if key in wanted:
                    found[key] = body
    return {n: found.get(n) or {"name": n, "username": None, "email": n if "@" in n else None} for n in wanted}
