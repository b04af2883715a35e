"""Correlation stage: group related incidents inside `correlation.time_window_secs`.

Each new incident is scored against the recent incidents of the window (and the earlier new ones
of its batch) by five strategies, each 0..1 and weighted: same source, same event type, text
similarity (cosine), tag overlap (Jaccard of key=value pairs), same service (or a catalog
dependency). The score is the weighted sum over the enabled strategies divided by their weights.
At or above `score_threshold` the incident joins the best candidate's group (or opens one whose
root is that earlier candidate), while the group has fewer than `max_group_size` members.

Groups and memberships are written here in one short transaction (the member table's primary key
on incident_id makes joining idempotent and settles races); the incident rows themselves are
written once, by the route stage.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

import numpy as np
from sqlalchemy import delete, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app import metrics
from app.adapters.db import read_session, unit_of_work
from app.adapters.models import Incident
from app.adapters.pipeline_models import CorrelationGroup, CorrelationMember
from app.config import CorrelationSettings, Settings, get_settings
from app.services.pipeline import text as textsim
from app.services.pipeline.batch import Batch, Snapshot, one_of
from app.services.pipeline.enrichment import Cache, catalog_entries
from app.services.pipeline.instruments import CORRELATION_GROUPS_CREATED

log = logging.getLogger(__name__)


@dataclass
class Item:
    """An incident as correlation compares it."""

    id: str
    source: str
    event_type: str | None
    service: str | None
    tags: frozenset[str]
    created_at: datetime
    group_id: str | None = None
    dependencies: frozenset[str] = field(default_factory=frozenset)


def strategy_scores(a: Item, b: Item, similarity: float) -> dict[str, float]:
    """Per-strategy match of two incidents, each in 0..1."""
    tags = len(a.tags & b.tags) / len(a.tags | b.tags) if (a.tags or b.tags) else 0.0
    service = 0.0
    if a.service and b.service:
        if a.service == b.service:
            service = 1.0
        elif b.service in a.dependencies or a.service in b.dependencies:
            service = 0.5
    return {
        "source": 1.0 if a.source == b.source else 0.0,
        "type": 1.0 if a.event_type and a.event_type == b.event_type else 0.0,
        "similarity": max(0.0, min(1.0, similarity)),
        "tags": tags,
        "service": service,
    }


def weighted_score(scores: dict[str, float], config: CorrelationSettings) -> tuple[float, list[dict[str, Any]]]:
    """(score 0..1, reasons) over the enabled strategies."""
    weights = {
        "source": config.source_weight if config.enable_source else 0.0,
        "type": config.type_weight if config.enable_type else 0.0,
        "similarity": config.similarity_weight if config.enable_similarity else 0.0,
        "tags": config.tags_weight if config.enable_tags else 0.0,
        "service": config.service_weight if config.enable_service else 0.0,
    }
    total = sum(weights.values())
    if total <= 0:
        return 0.0, []
    score = sum(weights[k] * scores[k] for k in weights) / total
    reasons = [{"strategy": k, "match": round(scores[k], 4), "weight": weights[k]}
               for k in weights if weights[k] > 0 and scores[k] > 0]
    return round(score, 4), reasons


class ScoreMatrix(np.ndarray):
    """Weighted scores (rows: new incidents, columns: candidates) carrying the similarity matrix."""

    similarity: np.ndarray


def _codes(values: Sequence[Any]) -> np.ndarray:
    index: dict[Any, int] = {}
    return np.array([-1 if v is None else index.setdefault(v, len(index)) for v in values], dtype=np.int64)


def score_matrix(new: Sequence[Item], columns: Sequence[Item], column_texts: Sequence[str],
                 config: CorrelationSettings, ids: Sequence[str] | None = None) -> ScoreMatrix:
    """Vectorised `weighted_score` of every new incident (the last len(new) columns) against every column."""
    n, m = len(new), len(columns)
    weights = np.array([
        config.source_weight if config.enable_source else 0.0, config.type_weight if config.enable_type else 0.0,
        config.similarity_weight if config.enable_similarity else 0.0,
        config.tags_weight if config.enable_tags else 0.0,
        config.service_weight if config.enable_service else 0.0,
    ])
    result = np.zeros((n, m)).view(ScoreMatrix)
    result.similarity = np.zeros((n, m))
    total = weights.sum()
    if n == 0 or m == 0 or total <= 0:
        return result
    offset = m - n
    def pairwise_equal(values: list[Any]) -> np.ndarray:
        codes = _codes(values)
        rows, cols = codes[offset:][:, None], codes[None, :]
        return ((rows == cols) & (rows >= 0)).astype(float)
    source = pairwise_equal([c.source for c in columns]) if weights[0] else 0.0
    etype = pairwise_equal([c.event_type for c in columns]) if weights[1] else 0.0
    similarity = np.zeros((n, m))
    if weights[2]:
        vecs = textsim.vectors_by_id(ids, column_texts) if ids is not None else textsim.vectors(column_texts)
        similarity = np.clip(textsim.similarity_matrix(vecs[offset:], vecs), 0.0, 1.0)
    tags: Any = 0.0
    if weights[3]:
        vocab: dict[str, int] = {}
        rows_idx, cols_idx = [], []
        for i, c in enumerate(columns):
            for tag in c.tags:
                rows_idx.append(i)
                cols_idx.append(vocab.setdefault(tag, len(vocab)))
        if vocab:
            from scipy import sparse

            mat = sparse.csr_matrix((np.ones(len(rows_idx)), (rows_idx, cols_idx)), shape=(m, len(vocab)))
            inter = np.asarray((mat[offset:] @ mat.T).todense())
            sizes = np.asarray(mat.sum(axis=1)).ravel()
            union = sizes[offset:][:, None] + sizes[None, :] - inter
            tags = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    service: Any = 0.0
    if weights[4]:
        service = pairwise_equal([c.service for c in columns])
        by_service: dict[str, list[int]] = {}
        for j, c in enumerate(columns):
            if c.service:
                by_service.setdefault(c.service, []).append(j)
        for i, item in enumerate(new):
            for dep in item.dependencies:
                for j in by_service.get(dep, []):
                    service[i, j] = max(service[i, j], 0.5)
        # the reverse direction: a candidate that depends on the new incident's service
        for j, c in enumerate(columns):
            for dep in c.dependencies:
                for i, item in enumerate(new):
                    if item.service == dep:
                        service[i, j] = max(service[i, j], 0.5)
    combined = (weights[0] * source + weights[1] * etype + weights[2] * similarity + weights[3] * tags
                + weights[4] * service) / total
    result[:] = combined
    result.similarity = similarity
    return result


@dataclass
class Candidate:
    """A recent incident of the window, with its correlation group (if any)."""

    id: str
    source: str
    event_type: str | None
    service: str | None
    tags: Any
    created_at: datetime
    title: str
    description: str
    group_id: str | None
    tag_set: frozenset[str] = frozenset()


# The window's recent incidents, cached in this process by id: each batch asks the database only
# for the ids of the newest ones (a short index scan) and for the details of those it has not seen.
_CANDIDATES: "OrderedDict[str, Candidate]" = OrderedDict()
_CANDIDATE_CACHE_SIZE = 20_000


def _recent_candidates(session: Session, since: datetime, limit: int) -> list[Candidate]:
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
            _CANDIDATES[r.id] = Candidate(id=r.id, source=r.source, event_type=r.event_type, service=r.service,
                                          tags=r.tags, created_at=r.created_at, title=r.title,
                                          description=(r.description or "")[:2000], group_id=None,
                                          tag_set=_tags(r.tags))
    for incident_id in wanted:
        _CANDIDATES.move_to_end(incident_id)
    while len(_CANDIDATES) > _CANDIDATE_CACHE_SIZE:
        _CANDIDATES.popitem(last=False)
    return [_CANDIDATES[i] for i in wanted if i in _CANDIDATES]


def _tags(tags: Any) -> frozenset[str]:
    return frozenset(f"{k}={v}" for k, v in (tags or {}).items() if isinstance(v, (str, int, float, bool)))


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


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
    with read_session() as session:
        # The newest incidents of the window first (a backward scan of ix_incidents_created_id; no
        # other filter or join before the LIMIT, so stale statistics cannot turn it into a sort).
        recent = _recent_candidates(session, since, config.max_candidates + len(batch_ids))
    catalog = catalog_entries({s["service"] for s in incidents if s["service"]} |
                              {r.service for r in recent if r.service},
                              Cache(settings.enrichment.cache_ttl_secs)) if config.enable_service else {}

    def deps(service: str | None) -> frozenset[str]:
        return frozenset((catalog.get(service or "") or {}).get("dependencies") or [])

    old = [r for r in recent if r.id not in batch_ids][:config.max_candidates]
    old_items = [Item(r.id, r.source, r.event_type, r.service, r.tag_set, r.created_at, None, deps(r.service))
                 for r in old]
    new_items = [Item(s["id"], s["source"], s["event_type"], s["service"], _tags(s["tags"]),
                      datetime.fromisoformat(s["created_at"]), None, deps(s["service"])) for s in incidents]
    items = old_items + new_items  # columns: old candidates, then this batch's incidents
    n_old = len(old_items)
    scores = score_matrix(new_items, items, [textsim.incident_text(r.title, r.description) for r in old] +
                          [textsim.incident_text(s["title"], s["description"]) for s in incidents], config,
                          ids=[c.id for c in items])
    # Groups matter only for the old candidates some new incident scores high enough with (and for
    # the batch's own incidents, grouped already when this batch runs again): one indexed query.
    best_of_column = np.asarray(scores)[:, :n_old].max(axis=0, initial=0.0)
    eligible = [items[j].id for j in np.flatnonzero(best_of_column >= config.score_threshold)]
    with read_session() as session:
        memberships = {m.incident_id: m for m in session.execute(
            select(CorrelationMember.incident_id, CorrelationMember.group_id, CorrelationGroup.member_count)
            .join(CorrelationGroup, CorrelationGroup.id == CorrelationMember.group_id)
            .where(one_of(CorrelationMember.incident_id, eligible + sorted(batch_ids))))}
        # Scores and reasons (JSON: costly to decode for hundreds of rows) only of this batch's own
        # incidents grouped by an earlier run of it.
        rerun = batch_ids & set(memberships)
        already = {m.incident_id: m for m in session.scalars(select(CorrelationMember).where(
            one_of(CorrelationMember.incident_id, rerun)))} if rerun else {}
    sizes = {m.group_id: m.member_count for m in memberships.values()}
    for item in old_items:
        membership = memberships.get(item.id)
        item.group_id = membership.group_id if membership else None
    order = sorted(range(len(new_items)), key=lambda i: (new_items[i].created_at, new_items[i].id))
    rank = np.empty(len(new_items), dtype=np.int64)
    rank[order] = np.arange(len(new_items))
    # Columns of a full group are no candidates; kept up to date as groups fill during the loop.
    col_rank = np.concatenate([np.full(n_old, -1, dtype=np.int64), rank])
    col_group = [c.group_id for c in items]
    group_cols: dict[str, list[int]] = {}
    for j, gid in enumerate(col_group):
        if gid:
            group_cols.setdefault(gid, []).append(j)
    blocked = np.array([bool(g) and sizes.get(g or "", 0) >= config.max_group_size for g in col_group], dtype=np.bool_)
    if config.max_group_size < 2:
        blocked[:] = True

    def grow(group_id: str, column: int) -> None:
        col_group[column] = group_id
        group_cols.setdefault(group_id, []).append(column)
        sizes[group_id] = sizes.get(group_id, 0) + 1
        if sizes[group_id] >= config.max_group_size:
            blocked[group_cols[group_id]] = True

    decisions: dict[str, dict[str, Any]] = {}  # incident id -> {group_id, score, reasons, ...}
    new_groups: dict[str, dict[str, Any]] = {}
    for idx in order:
        item = new_items[idx]
        column = n_old + idx
        if item.id in already:
            member = already[item.id]
            item.group_id = member.group_id
            col_group[column] = member.group_id
            decisions[item.id] = {"group_id": member.group_id, "score": member.score, "reasons": member.reasons,
                                  "existing": True}
            continue
        # Candidates: the window's incidents and the earlier incidents of this batch, in groups with room.
        row = np.where(blocked | (col_rank >= rank[idx]), -1.0, scores[idx])
        if row.size == 0:
            continue
        best_j = int(np.argmax(row))
        if row[best_j] < config.score_threshold:
            continue
        other = items[best_j]
        other.group_id = col_group[best_j]
        score, reasons = weighted_score(strategy_scores(item, other, float(scores.similarity[idx, best_j])), config)
        if other.group_id is None:
            group_id = f"CG-{uuid.uuid4().hex[:20]}"
            other.group_id = group_id
            new_groups[group_id] = {"root": other.id, "score": score, "reasons": reasons}
            grow(group_id, best_j)
            if other.id in batch_ids:
                decisions[other.id] = {"group_id": group_id, "score": 1.0, "reasons": [{"strategy": "root"}]}
        item.group_id = other.group_id
        grow(other.group_id, column)
        decisions[item.id] = {"group_id": other.group_id, "score": score, "reasons": reasons,
                              "related_to": other.id}

    if new_groups or any(not d.get("existing") for d in decisions.values()):
        decisions = _persist(decisions, new_groups, now, config.max_group_size)
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
        insert = _insert(session)
        remap: dict[str, str] = {}
        if new_groups:
            session.execute(insert(CorrelationGroup).values([
                {"id": gid, "root_incident_id": g["root"], "score": g["score"], "reasons": g["reasons"],
                 "member_count": 0, "created_at": now, "updated_at": now} for gid, g in sorted(new_groups.items())]))
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
        roots_of = dict(session.execute(select(CorrelationGroup.id, CorrelationGroup.root_incident_id).where(
            one_of(CorrelationGroup.id, {d["group_id"] for d in decisions.values()}))).all())
    created = sum(1 for gid in new_groups if remap.get(gid, gid) == gid)
    if created:
        CORRELATION_GROUPS_CREATED.inc(created)
    for decision in decisions.values():
        decision["root_incident_id"] = roots_of.get(decision["group_id"], decision.get("root_incident_id"))
    return decisions


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


_RECORDSET_COUNTS = text(
    "UPDATE correlation_groups AS g SET member_count = g.member_count + v.n, updated_at = :now "
    "FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(id text, n int) WHERE g.id = v.id"
)


def _add_member_counts(session: Session, added: dict[str, int], now: datetime) -> None:
    ordered = sorted(added)
    session.execute(select(CorrelationGroup.id).where(one_of(CorrelationGroup.id, ordered))
                    .order_by(CorrelationGroup.id).with_for_update())
    if session.get_bind().dialect.name == "postgresql":
        rows = json.dumps([{"id": g, "n": added[g]} for g in ordered])
        session.execute(_RECORDSET_COUNTS, {"now": now, "rows": rows})
        return
    for group_id in ordered:
        session.execute(update(CorrelationGroup).where(CorrelationGroup.id == group_id).values(
            member_count=CorrelationGroup.member_count + added[group_id], updated_at=now))


_RECORDSET_MEMBERS = text(
    "INSERT INTO correlation_group_members (incident_id, group_id, score, reasons, added_at) "
    "SELECT v.incident_id, v.group_id, v.score, v.reasons, :now "
    "FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(incident_id text, group_id text, score float8, reasons jsonb) "
    "ON CONFLICT (incident_id) DO NOTHING RETURNING incident_id, group_id"
)


def _insert_members(session: Session, members: list[dict[str, Any]], now: datetime) -> list[tuple[str, str]]:
    """Insert memberships, skipping incidents already in a group; (incident_id, group_id) of those inserted."""
    if session.get_bind().dialect.name == "postgresql":
        payload = [{k: m[k] for k in ("incident_id", "group_id", "score", "reasons")} for m in members]
        rows = session.execute(_RECORDSET_MEMBERS, {"now": now, "rows": json.dumps(payload)}).all()
    else:
        rows = session.execute(
            _insert(session)(CorrelationMember).values(members).on_conflict_do_nothing(index_elements=["incident_id"])
            .returning(CorrelationMember.incident_id, CorrelationMember.group_id)).all()
    return [(r[0], r[1]) for r in rows]


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
