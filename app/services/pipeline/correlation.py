"""Correlation stage: group related incidents inside `correlation.time_window_secs`.

Each new incident is scored against the recent incidents of the window (and the earlier new ones
of its batch) by five strategies, each 0..1 and weighted: same source, same event type, text
similarity (cosine), tag overlap (Jaccard of key=value pairs), same service (or a catalog
dependency). The score is the weighted sum over the enabled strategies divided by their weights.
At or above `score_threshold` the incident joins the best candidate's group (or opens one whose
root is that earlier candidate), while the group has fewer than `max_group_size` members.

Groups and memberships are written here in one short transaction (the member table's primary key
on incident_id makes joining idempotent and settles races); the incident rows themselves are
written once, by the route stage, which reads each incident's group from the memberships. An
incident the route stage wrote before its membership committed gets its group here.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence, cast

import numpy as np
from sqlalchemy import Table, delete, select, update
from sqlalchemy.orm import Session

from app import metrics
from app.adapters import bulk
from app.adapters.bulk import one_of
from app.adapters.db import read_session, retry_on_conflict, unit_of_work
from app.adapters.models import INCIDENT_LOCK_ORDER, Incident
from app.adapters.pipeline_models import CorrelationGroup, CorrelationMember
from app.config import Settings, get_settings
from app.services.pipeline import text as textsim
from app.services.pipeline.batch import Batch, Snapshot
from app.services.pipeline.enrichment import Cache, catalog_entries
from app.services.pipeline.grouping import Item, dependencies, make_item, plan_groups, score_matrix
from app.services.pipeline.instruments import CORRELATION_GROUPS_CREATED

log = logging.getLogger(__name__)

_GROUPS = cast(Table, CorrelationGroup.__table__)
_MEMBERS = cast(Table, CorrelationMember.__table__)


# The window's recent incidents, cached in this process by id as Items without their group or
# catalog dependencies (both read per batch): each batch asks the database only for the ids of the
# newest ones (a short index scan) and for the details of those it has not seen.
_CANDIDATES: "OrderedDict[str, Item]" = OrderedDict()
# A batch needs the newest max_candidates + batch size (1,500 by default); an Item holds up to ~4 KB
# of text, so this bounds the cache near 20 MB per process.
_CANDIDATE_CACHE_SIZE = 5_000


def _recent_candidates(session: Session, since: datetime, limit: int, batch: Sequence[Item] = ()) -> list[Item]:
    """The window's newest `limit` incidents, unmerged, as Items. The batch's own new incidents
    (`batch`, made from the snapshot dedup read) are taken as they are, not read again."""
    for item in batch:
        _CANDIDATES[item.id] = replace(item, dependencies=frozenset(), group_id=None)
    newest = session.execute(
        select(Incident.id, Incident.created_at, Incident.merged_into).where(Incident.created_at >= since)
        .order_by(Incident.created_at.desc(), Incident.id.desc()).limit(limit)
    ).all()
    wanted = [r.id for r in newest if r.merged_into is None]
    # An id seen with another creation time (a database restored or recreated) is read again.
    missing = [r.id for r in newest if r.merged_into is None and
               (r.id not in _CANDIDATES or _CANDIDATES[r.id].created_at != r.created_at)]
    if missing:
        for r in session.execute(
            select(Incident.id, Incident.source, Incident.event_type, Incident.service, Incident.tags,
                   Incident.created_at, Incident.title, Incident.description).where(one_of(Incident.id, missing))
        ):
            _CANDIDATES[r.id] = make_item(r.id, r.source, r.event_type, r.service, r.tags, r.created_at, r.title,
                                          r.description, {})
    for incident_id in wanted:
        _CANDIDATES.move_to_end(incident_id)
    while len(_CANDIDATES) > _CANDIDATE_CACHE_SIZE:
        _CANDIDATES.popitem(last=False)
    return [_CANDIDATES[i] for i in wanted if i in _CANDIDATES]


def correlate(batch: Batch, settings: Settings | None = None) -> Batch:
    """Add `correlation[incident_id]` = {group_id, root_incident_id, score, reasons} for grouped incidents."""
    settings = settings or get_settings()
    config = settings.correlation
    incidents: list[Snapshot] = batch["incidents"]
    if not incidents or not (settings.enable_correlation and config.enabled):
        return batch
    started = time.perf_counter()
    now = datetime.now(timezone.utc)
    batch_ids = {s["id"] for s in incidents}
    since = now - timedelta(seconds=config.time_window_secs)
    bare = [make_item(s["id"], s["source"], s["event_type"], s["service"], s["tags"],
                      datetime.fromisoformat(s["created_at"]), s["title"], s["description"], {})
            for s in incidents]
    with read_session() as session:
        # The newest incidents of the window first (a backward scan of ix_incidents_created_id; no
        # other filter or join before the LIMIT, so stale statistics cannot turn it into a sort).
        recent = _recent_candidates(session, since, config.max_candidates + len(batch_ids), bare)
    catalog = catalog_entries({s["service"] for s in incidents if s["service"]} |
                              {r.service for r in recent if r.service},
                              Cache(settings.enrichment.cache_ttl_secs)) if config.enable_service else {}
    old = [r for r in recent if r.id not in batch_ids][:config.max_candidates]
    old_items = [replace(r, dependencies=dependencies(catalog, r.service)) for r in old]
    new_items = [replace(item, dependencies=dependencies(catalog, item.service)) for item in bare]
    columns = old_items + new_items  # old candidates, then this batch's incidents
    vectors = textsim.vectors_by_id([c.id for c in columns], [c.text for c in columns]) \
        if config.enable_similarity else None
    scores = score_matrix(new_items, columns, config,
                          (vectors[len(old_items):], vectors) if vectors is not None else None)
    # Groups matter only for the old candidates some new incident scores high enough with (and for
    # the batch's own incidents, grouped already when this batch runs again): one indexed query.
    best_of_column = scores.total[:, :len(old_items)].max(axis=0, initial=0.0)
    eligible = [old_items[j].id for j in np.flatnonzero(best_of_column >= config.score_threshold)]
    with read_session() as session:
        memberships = {m.incident_id: m for m in session.execute(
            select(CorrelationMember.incident_id, CorrelationMember.group_id, CorrelationGroup.member_count)
            .join(CorrelationGroup, CorrelationGroup.id == CorrelationMember.group_id)
            .where(one_of(CorrelationMember.incident_id, eligible + sorted(batch_ids))))}
        # Scores and reasons (JSON: costly to decode for hundreds of rows) only of this batch's own
        # incidents grouped by an earlier run of it.
        rerun = batch_ids & set(memberships)
        already = {m.incident_id: {"group_id": m.group_id, "score": m.score, "reasons": m.reasons}
                   for m in session.scalars(select(CorrelationMember).where(
                       one_of(CorrelationMember.incident_id, rerun)))} if rerun else {}
    for item in old_items:
        membership = memberships.get(item.id)
        item.group_id = membership.group_id if membership else None
    plan = plan_groups(new_items, old_items, scores, {m.group_id: m.member_count for m in memberships.values()},
                       already, config)
    decisions = plan.decisions
    if plan.new_groups or any(not d.get("existing") for d in decisions.values()):
        planned = decisions  # each attempt works on its own copies (a lost deadlock re-runs it whole)
        decisions = retry_on_conflict("pipeline correlate", lambda: _persist(
            {k: dict(v) for k, v in planned.items()}, plan.new_groups, now, config.max_group_size))
    elif decisions:  # this batch ran before and grouped everything: its groups' roots as recorded
        with read_session() as session:
            roots_of = dict(session.execute(select(CorrelationGroup.id, CorrelationGroup.root_incident_id).where(
                one_of(CorrelationGroup.id, {d["group_id"] for d in decisions.values()}))).all())
        for decision in decisions.values():
            decision["root_incident_id"] = roots_of.get(decision["group_id"])
    for incident_id, decision in decisions.items():
        batch["correlation"][incident_id] = {k: v for k, v in decision.items() if k != "existing"}
    # Earlier incidents that are the root of a group this batch joins: route stamps their group
    # (only where still unset). All of them, not only groups opened by this run, so that a run
    # killed after committing its groups and before route leaves no root unstamped on the re-run.
    batch["correlation_roots"] = {d["root_incident_id"]: d["group_id"] for d in decisions.values()
                                  if d.get("root_incident_id") and d["root_incident_id"] not in batch_ids}
    metrics.PROCESSING_DURATION.labels(stage="correlate").observe(time.perf_counter() - started)
    return batch


def _persist(decisions: dict[str, dict[str, Any]], new_groups: dict[str, dict[str, Any]],
             now: datetime, max_group_size: int) -> dict[str, dict[str, Any]]:
    """Write groups and memberships in one short transaction. A root another worker grouped first
    keeps its group: our new group is dropped and its members join that one instead."""
    with unit_of_work() as session:
        # The incidents this transaction may group, locked FOR NO KEY UPDATE up front in the global
        # order (INCIDENT_LOCK_ORDER): a route run (FOR UPDATE on the incidents it writes) waits for
        # this commit and then reads the memberships, or this waits for the route's commit and then
        # stamps them below. NO KEY UPDATE, not KEY SHARE, because the stamp writes some of them: a
        # lock upgraded later would be taken out of order. A member row whose incident lacks its
        # group cannot be left behind by a kill or a concurrent batch with the same incident.
        candidates = sorted(set(decisions) | {g["root"] for g in new_groups.values()})
        session.execute(select(Incident.id).where(one_of(Incident.id, candidates)).order_by(*INCIDENT_LOCK_ORDER)
                        .with_for_update(key_share=True))
        remap: dict[str, str] = {}
        won: set[str] = set()
        if new_groups:
            bulk.insert_rows(session, _GROUPS, [
                {"id": gid, "root_incident_id": g["root"], "score": g["score"], "reasons": g["reasons"],
                 "member_count": 0, "created_at": now, "updated_at": now} for gid, g in sorted(new_groups.items())])
            root_rows = [{"incident_id": g["root"], "group_id": gid, "score": 1.0, "reasons": [{"strategy": "root"}],
                          "added_at": now} for gid, g in sorted(new_groups.items(), key=lambda kv: kv[1]["root"])]
            won = {incident_id for incident_id, _ in _insert_members(session, root_rows, now)}
            lost_roots = {g["root"]: gid for gid, g in new_groups.items() if g["root"] not in won}
            if lost_roots:  # grouped by another worker meanwhile: our group joins theirs
                for row in session.execute(select(CorrelationMember.incident_id, CorrelationMember.group_id)
                                           .where(one_of(CorrelationMember.incident_id, lost_roots))):
                    remap[lost_roots[row.incident_id]] = row.group_id
            dropped = [gid for gid, target in remap.items() if target != gid]
            if dropped:
                session.execute(delete(CorrelationGroup).where(one_of(CorrelationGroup.id, dropped)))
        members = []
        roots = {g["root"] for g in new_groups.values()}
        for incident_id, decision in sorted(decisions.items()):
            if decision.get("existing"):
                continue
            decision["group_id"] = remap.get(decision["group_id"], decision["group_id"])
            if incident_id in roots and decision["reasons"] == [{"strategy": "root"}]:
                decision["root_incident_id"] = incident_id
                continue
            members.append({"incident_id": incident_id, "group_id": decision["group_id"], "score": decision["score"],
                            "reasons": decision["reasons"], "added_at": now})
        joined: list[tuple[str, str]] = []
        existing = sorted({m["group_id"] for m in members} - {remap.get(gid, gid) for gid in new_groups})
        over: set[str] = set()
        if existing:
            members, over = _within_capacity(session, members, existing, max_group_size)
        if members:
            joined = _insert_members(session, members, now)
        added: dict[str, int] = {}
        for _, group_id in joined:
            added[group_id] = added.get(group_id, 0) + 1
        for gid in new_groups:
            if remap.get(gid, gid) == gid:
                added[gid] = added.get(gid, 0) + 1  # the root
        # Hot rows, at the end of the transaction: locked in id order, then one UPDATE for all.
        if added:
            _add_member_counts(session, added, now)
        # Members that lost a race keep the group they already have (another run of this batch may
        # have grouped them); those that found their group full and have none stay ungrouped.
        lost = {m["incident_id"] for m in members} - {i for i, _ in joined} | over
        if lost:
            found = dict(session.execute(select(CorrelationMember.incident_id, CorrelationMember.group_id)
                                         .where(one_of(CorrelationMember.incident_id, lost))).all())
            for incident_id in lost:
                if incident_id in found:
                    decisions[incident_id]["group_id"] = found[incident_id]
                else:
                    del decisions[incident_id]
        _stamp_processed(session, won | {incident_id for incident_id, _ in joined})
        roots_of = dict(session.execute(select(CorrelationGroup.id, CorrelationGroup.root_incident_id).where(
            one_of(CorrelationGroup.id, {d["group_id"] for d in decisions.values()}))).all())
    created = sum(1 for gid in new_groups if remap.get(gid, gid) == gid)
    if created:
        CORRELATION_GROUPS_CREATED.inc(created)
    for decision in decisions.values():
        decision["root_incident_id"] = roots_of.get(decision["group_id"], decision.get("root_incident_id"))
    return decisions


def _stamp_processed(session: Session, grouped: set[str]) -> None:
    """The group on incidents given a membership now whose row the route stage has already
    written (an earlier root, or a new incident another batch finished first): where still unset.
    Other incidents get their group from the route stage's one write."""
    if grouped:
        session.execute(update(Incident).where(
            one_of(Incident.id, sorted(grouped)), Incident.processed_at.is_not(None),
            Incident.correlation_group_id.is_(None),
        ).values(correlation_group_id=select(CorrelationMember.group_id)
                 .where(CorrelationMember.incident_id == Incident.id).scalar_subquery()))


def _within_capacity(session: Session, members: list[dict[str, Any]], group_ids: list[str],
                     max_group_size: int) -> tuple[list[dict[str, Any]], set[str]]:
    """(members that still fit their existing group, incident ids of those that do not). Another
    worker may have filled a group since this batch read its size: the groups are locked (in id
    order, the same order `_add_member_counts` uses) and counted again, so `max_group_size` holds
    under concurrency."""
    counts = dict(session.execute(
        select(CorrelationGroup.id, CorrelationGroup.member_count).where(one_of(CorrelationGroup.id, group_ids))
        .order_by(CorrelationGroup.id).with_for_update()).all())
    room = {group_id: max_group_size - counts.get(group_id, 0) for group_id in group_ids}
    kept, over = [], set()
    for member in members:
        group_id = member["group_id"]
        if group_id in room:
            if room[group_id] <= 0:
                over.add(member["incident_id"])
                continue
            room[group_id] -= 1
        kept.append(member)
    return kept, over


def _add_member_counts(session: Session, added: dict[str, int], now: datetime) -> None:
    ordered = sorted(added)
    session.execute(select(CorrelationGroup.id).where(one_of(CorrelationGroup.id, ordered))
                    .order_by(CorrelationGroup.id).with_for_update())
    bulk.update_rows(session, _GROUPS, "id", [{"b_key": g, "member_count": added[g]} for g in ordered],
                     {"updated_at": now}, add=("member_count",))


def _insert_members(session: Session, members: list[dict[str, Any]], now: datetime) -> list[tuple[str, str]]:
    """Insert memberships, skipping incidents already in a group; (incident_id, group_id) of those inserted."""
    rows = [{k: m[k] for k in ("incident_id", "group_id", "score", "reasons")} | {"added_at": now} for m in members]
    group_of = {m["incident_id"]: m["group_id"] for m in members}
    inserted = bulk.insert_rows(session, _MEMBERS, rows, conflict_key="incident_id", returning="incident_id")
    return [(incident_id, group_of[incident_id]) for incident_id in inserted]


def related(session: Session, incident_id: str) -> tuple[CorrelationGroup | None, list[CorrelationMember]]:
    """The group of an incident and its members (empty when it is in none)."""
    member = session.get(CorrelationMember, incident_id)
    if member is None:
        return None, []
    group = session.get(CorrelationGroup, member.group_id)
    members = list(session.scalars(select(CorrelationMember).where(CorrelationMember.group_id == member.group_id)
                                   .order_by(CorrelationMember.added_at, CorrelationMember.incident_id)))
    return group, members


def group_ids(items: Sequence[dict[str, Any]]) -> list[str]:
    return sorted({i["group_id"] for i in items if i.get("group_id")})
