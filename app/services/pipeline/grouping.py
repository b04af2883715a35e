"""Correlation without a database: the one scorer and the grouping decision (docs/pipeline.md,
"Correlation").

`score_matrix` is the only place two incidents are scored. The pipeline's correlate stage scores a
batch against the window with it, and `app.services.correlation.analyze` (gRPC's
AnalyzeCorrelations) scores one incident against its neighbours with it, so both give the same
score and reasons for the same pair. `plan_groups` decides, from the scores and the groups as read,
which group each new incident joins or opens; `app.services.pipeline.correlation` reads and writes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import sparse

from app.config import CorrelationSettings
from app.services.pipeline import text as textsim

STRATEGIES = ("source", "type", "similarity", "tags", "service")


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
    text: str = ""


def tag_set(tags: Mapping[str, Any] | None) -> frozenset[str]:
    """Tags as comparable `key=value` strings (nested values do not take part)."""
    return frozenset(f"{k}={v}" for k, v in (tags or {}).items() if isinstance(v, (str, int, float, bool)))


def make_item(incident_id: str, source: str, event_type: str | None, service: str | None,
              tags: Mapping[str, Any] | None, created_at: datetime, title: str, description: str | None,
              catalog: Mapping[str, Any]) -> Item:
    """The one way an incident becomes an Item (catalog: service name -> entry with `dependencies`)."""
    return Item(incident_id, source, event_type, service, tag_set(tags), created_at, None,
                dependencies(catalog, service), textsim.incident_text(title, (description or "")[:2000]))


def dependencies(catalog: Mapping[str, Any], service: str | None) -> frozenset[str]:
    """The catalog's dependencies of a service (none when it is not in the catalog)."""
    return frozenset((catalog.get(service or "") or {}).get("dependencies") or [])


def weights(config: CorrelationSettings) -> np.ndarray:
    """Weight per strategy (STRATEGIES order); 0 for a disabled one."""
    return np.array([
        config.source_weight if config.enable_source else 0.0, config.type_weight if config.enable_type else 0.0,
        config.similarity_weight if config.enable_similarity else 0.0,
        config.tags_weight if config.enable_tags else 0.0, config.service_weight if config.enable_service else 0.0,
    ])


class Scores:
    """Scores of rows (incidents being correlated) against columns (candidates): the weighted
    total and each strategy's match, all 0..1."""

    def __init__(self, total: np.ndarray, parts: dict[str, np.ndarray], weight: np.ndarray) -> None:
        self.total = total
        self.parts = parts
        self.weight = weight

    @property
    def shape(self) -> tuple[int, ...]:
        return self.total.shape

    def score(self, row: int, column: int) -> float:
        return round(float(self.total[row, column]), 4)

    def reasons(self, row: int, column: int) -> list[dict[str, Any]]:
        """The strategies that matched, how much, and their weight."""
        found = []
        for k, name in enumerate(STRATEGIES):
            match = float(self.parts[name][row, column])
            if self.weight[k] > 0 and match > 0:
                found.append({"strategy": name, "match": round(match, 4), "weight": float(self.weight[k])})
        return found


def _codes(values: Sequence[Any]) -> np.ndarray:
    index: dict[Any, int] = {}
    return np.array([-1 if v is None else index.setdefault(v, len(index)) for v in values], dtype=np.int64)


def score_matrix(rows: Sequence[Item], columns: Sequence[Item], config: CorrelationSettings,
                 vectors: tuple[sparse.csr_matrix, sparse.csr_matrix] | None = None) -> Scores:
    """Score every row against every column: per strategy 0..1 (same source; same event type; cosine
    of the text vectors; Jaccard of the tags; 1 for the same service, 0.5 when one depends on the
    other), then the weighted sum over the enabled strategies divided by their weights.
    `vectors`: the text vectors of the rows and of the columns, when the caller has them cached."""
    n, m = len(rows), len(columns)
    weight = weights(config)
    # float32 throughout: five n x m matrices per batch, and scores only need 4 decimals
    parts = {name: np.zeros((n, m), dtype=np.float32) for name in STRATEGIES}
    if n == 0 or m == 0 or weight.sum() <= 0:
        return Scores(np.zeros((n, m), dtype=np.float32), parts, weight)
    both = list(rows) + list(columns)

    def pairwise_equal(values: list[Any]) -> np.ndarray:
        codes = _codes(values)
        left, right = codes[:n][:, None], codes[n:][None, :]
        return ((left == right) & (left >= 0)).astype(np.float32)

    if weight[0]:
        parts["source"] = pairwise_equal([c.source for c in both])
    if weight[1]:
        parts["type"] = pairwise_equal([c.event_type for c in both])
    if weight[2]:
        left, right = vectors or (textsim.vectors([c.text for c in rows]), textsim.vectors([c.text for c in columns]))
        parts["similarity"] = np.clip(textsim.similarity_matrix(left, right), 0.0, 1.0).astype(np.float32)
    if weight[3]:
        vocab: dict[str, int] = {}
        rows_idx, cols_idx = [], []
        for i, c in enumerate(both):
            for tag in c.tags:
                rows_idx.append(i)
                cols_idx.append(vocab.setdefault(tag, len(vocab)))
        if vocab:
            mat = sparse.csr_matrix((np.ones(len(rows_idx), dtype=np.float32), (rows_idx, cols_idx)),
                                    shape=(n + m, len(vocab)))
            inter = textsim.similarity_matrix(mat[:n], mat[n:]).astype(np.float32)  # shared tags
            sizes = np.asarray(mat.sum(axis=1), dtype=np.float32).ravel()
            union = sizes[:n][:, None] + sizes[n:][None, :] - inter
            parts["tags"] = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    if weight[4]:
        service = pairwise_equal([c.service for c in both])
        by_service: dict[str, list[int]] = {}
        for j, c in enumerate(columns):
            if c.service:
                by_service.setdefault(c.service, []).append(j)
        for i, item in enumerate(rows):
            for dep in item.dependencies:
                for j in by_service.get(dep, []):
                    service[i, j] = max(service[i, j], 0.5)
        row_of_service: dict[str, list[int]] = {}
        for i, item in enumerate(rows):
            if item.service:
                row_of_service.setdefault(item.service, []).append(i)
        for j, c in enumerate(columns):  # the reverse direction: a candidate depending on the row's service
            for dep in c.dependencies:
                for i in row_of_service.get(dep, []):
                    service[i, j] = max(service[i, j], 0.5)
        parts["service"] = service
    total = np.zeros((n, m), dtype=np.float32)
    for k, name in enumerate(STRATEGIES):
        if weight[k]:
            total += np.float32(weight[k] / weight.sum()) * parts[name]
    np.clip(total, 0.0, 1.0, out=total)  # float32 sums may exceed 1 in the 7th digit
    return Scores(total, parts, weight)


def score_pair(a: Item, b: Item, config: CorrelationSettings) -> tuple[float, list[dict[str, Any]]]:
    """(score, reasons) of one pair: `score_matrix` of one row and one column."""
    scores = score_matrix([a], [b], config)
    return scores.score(0, 0), scores.reasons(0, 0)


@dataclass
class Plan:
    """What correlating a batch decided: per new incident {group_id, score, reasons, related_to}
    (`existing`: grouped by an earlier run of the batch), and the groups it opens {root, score, reasons}."""

    decisions: dict[str, dict[str, Any]]
    new_groups: dict[str, dict[str, Any]]


def new_group_id() -> str:
    return f"CG-{uuid.uuid4().hex[:20]}"


def plan_groups(new: Sequence[Item], old: Sequence[Item], scores: Scores, group_sizes: Mapping[str, int],
                already: Mapping[str, Mapping[str, Any]], config: CorrelationSettings,
                make_group_id: Callable[[], str] = new_group_id) -> Plan:
    """Decide the groups of the batch's new incidents.

    `scores`: rows `new`, columns `old + new` (old: the window's candidates, with `group_id` as read);
    `group_sizes`: member count of the groups read; `already`: {incident id: {group_id, score,
    reasons}} for new incidents an earlier run of this batch grouped. In creation order, each new
    incident joins the group of its best candidate at or above `score_threshold` (an old incident
    or an earlier new one, in a group with room), or opens a group whose root is that candidate."""
    n_old = len(old)
    columns = list(old) + list(new)
    ids = {item.id for item in new}
    order = sorted(range(len(new)), key=lambda i: (new[i].created_at, new[i].id))
    rank = np.empty(len(new), dtype=np.int64)
    rank[order] = np.arange(len(new))
    # A column is a candidate of a row only if it is older in the batch's order (old ones are -1).
    col_rank = np.concatenate([np.full(n_old, -1, dtype=np.int64), rank])
    col_group: list[str | None] = [c.group_id for c in old] + [None] * len(new)
    sizes = dict(group_sizes)
    group_cols: dict[str, list[int]] = {}
    for j, gid in enumerate(col_group):
        if gid:
            group_cols.setdefault(gid, []).append(j)
    blocked = np.array([bool(g) and sizes.get(g or "", 0) >= config.max_group_size for g in col_group],
                       dtype=np.bool_)
    if config.max_group_size < 2:
        blocked[:] = True

    def grow(group_id: str, column: int) -> None:
        col_group[column] = group_id
        group_cols.setdefault(group_id, []).append(column)
        sizes[group_id] = sizes.get(group_id, 0) + 1
        if sizes[group_id] >= config.max_group_size:
            blocked[group_cols[group_id]] = True

    decisions: dict[str, dict[str, Any]] = {}
    new_groups: dict[str, dict[str, Any]] = {}
    for idx in order:
        item = new[idx]
        column = n_old + idx
        if item.id in already:
            earlier = already[item.id]
            col_group[column] = earlier["group_id"]
            group_cols.setdefault(earlier["group_id"], []).append(column)
            blocked[column] = sizes.get(earlier["group_id"], 0) >= config.max_group_size
            decisions[item.id] = {"group_id": earlier["group_id"], "score": earlier["score"],
                                  "reasons": earlier["reasons"], "existing": True}
            continue
        row = np.where(blocked | (col_rank >= rank[idx]), -1.0, scores.total[idx])
        if row.size == 0:
            continue
        best = int(np.argmax(row))
        if row[best] < config.score_threshold:
            continue
        other = columns[best]
        score, reasons = scores.score(idx, best), scores.reasons(idx, best)
        group_id = col_group[best]
        if group_id is None:
            group_id = make_group_id()
            new_groups[group_id] = {"root": other.id, "score": score, "reasons": reasons}
            grow(group_id, best)
            if other.id in ids:
                decisions[other.id] = {"group_id": group_id, "score": 1.0, "reasons": [{"strategy": "root"}]}
        grow(group_id, column)
        decisions[item.id] = {"group_id": group_id, "score": score, "reasons": reasons, "related_to": other.id}
    return Plan(decisions, new_groups)
