"""Enrichment stage: similar past incidents, service catalog entry, on-call now, Prometheus metrics.

Every enricher is optional and bounded by `enrichment.timeout_secs`; one that fails or runs out of
time is recorded in the incident's enrichment as `partial: true` with its error, and never stops
the batch. Results are cached in Redis (`enrichment.cache_ttl_secs`): similar incidents by text,
catalog entries by service, metric answers by PromQL query."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

import httpx
import numpy as np
import orjson
from sqlalchemy import select

from app import metrics
from app.adapters.bulk import one_of
from app.adapters.db import read_session
from app.adapters.models import Incident
from app.adapters.redis_client import get_redis
from app.config import Settings, get_settings
from app.services import service_catalog
from app.services.pipeline import text
from app.services.pipeline.batch import Batch, Snapshot
from app.services.pipeline.instruments import ENRICHMENT_DURATION, ENRICHMENT_FAILURES, record_cache

log = logging.getLogger(__name__)

CACHE_PREFIX = "im:enrich:"
NEGATIVE = "null"


class EnrichmentTimeout(TimeoutError):
    pass


# SET key value EX ttl for every key: KEYS are the keys, ARGV[1] the TTL, ARGV[2..] the values.
_SET_MANY = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1])
end
return #KEYS
"""


class Cache:
    """A JSON cache in Redis with a TTL; a no-op without Redis (embedded default)."""

    def __init__(self, ttl_secs: int) -> None:
        self.client = get_redis()
        self.ttl = ttl_secs

    def get_many(self, kind: str, keys: Sequence[str]) -> dict[str, Any]:
        if self.client is None or not keys or self.ttl <= 0:
            record_cache(kind, 0, len(keys))
            return {}
        try:
            values = self.client.mget([f"{CACHE_PREFIX}{kind}:{k}" for k in keys])
        except Exception:  # the cache is an optimisation; a Redis hiccup means a miss, not a failure
            log.warning("enrichment cache read failed", exc_info=True, extra={"kind": kind})
            record_cache(kind, 0, len(keys))
            return {}
        found = {k: orjson.loads(v) for k, v in zip(keys, values, strict=True) if v is not None}
        record_cache(kind, len(found), len(keys) - len(found))
        return found

    def set_many(self, kind: str, values: Mapping[str, Any]) -> None:
        if self.client is None or not values or self.ttl <= 0:
            return
        try:
            # One command for the batch (a pipeline of 1,000 SETs cost ~50 ms of client CPU in replies)
            keys = [f"{CACHE_PREFIX}{kind}:{key}" for key in values]
            encoded = [orjson.dumps(value, default=str) for value in values.values()]
            self.client.eval(_SET_MANY, len(keys), *keys, self.ttl, *encoded)
        except Exception:
            log.warning("enrichment cache write failed", exc_info=True, extra={"kind": kind})


def _digest(value: str) -> str:
    return hashlib.sha1(value.encode()).hexdigest()


def enrich(batch: Batch, settings: Settings | None = None) -> Batch:
    """Add `enrichment[incident_id]` for the batch's new incidents. Never raises for an enricher."""
    settings = settings or get_settings()
    incidents: list[Snapshot] = batch["incidents"]
    if not incidents or not (settings.enable_enrichment and settings.enrichment.enabled):
        return batch
    started = time.perf_counter()
    config = settings.enrichment
    deadline = time.monotonic() + config.timeout_secs
    cache = Cache(config.cache_ttl_secs)
    results: dict[str, dict[str, Any]] = {
        s["id"]: {"similar_incidents": [], "service": None, "on_call": None, "metrics": {}, "partial": False,
                  "errors": {}}
        for s in incidents
    }

    def run(name: str, enabled: bool, enricher: Callable[[], None]) -> None:
        if not enabled:
            return
        began = time.perf_counter()
        try:
            if time.monotonic() > deadline:
                raise EnrichmentTimeout(f"enrichment deadline of {config.timeout_secs}s passed before {name} ran")
            enricher()
        except Exception as exc:  # recorded as partial enrichment; never blocks the incident
            ENRICHMENT_FAILURES.labels(enricher=name).inc()
            log.warning("enricher failed; partial enrichment", extra={"enricher": name, "error": str(exc)[:300]})
            for result in results.values():
                result["partial"] = True
                result["errors"][name] = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            ENRICHMENT_DURATION.labels(enricher=name).observe(time.perf_counter() - began)

    catalog: dict[str, dict[str, Any]] = {}

    def services() -> None:
        catalog.update(_services(incidents, cache))
        for snap in incidents:
            entry = catalog_entry(catalog, snap)
            results[snap["id"]]["service"] = _service_view(entry) if entry else None

    run("historical", config.enable_historical, lambda: _similar(incidents, results, cache, config, batch))
    run("service", config.enable_service, services)
    run("team", config.enable_team, lambda: _on_call(incidents, results, catalog))
    run("metrics", bool(settings.prometheus_url),
        lambda: _metrics(incidents, results, catalog, cache, settings, deadline))

    now = datetime.now(timezone.utc).isoformat()
    elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
    for result in results.values():
        result["enriched_at"] = now
        result["duration_ms"] = elapsed_ms
    batch["enrichment"] = results
    ENRICHMENT_DURATION.labels(enricher="all").observe(time.perf_counter() - started)
    metrics.PROCESSING_DURATION.labels(stage="enrich").observe(time.perf_counter() - started)
    return batch


# ------------------------------------------------------------------------------- similar incidents

def _similar(incidents: Sequence[Snapshot], results: dict[str, dict[str, Any]], cache: Cache,
             config: Any, batch: Batch) -> None:
    keys = {s["id"]: _digest(f"{s['source']}|{text.incident_text(s['title'], s['description'])}") for s in incidents}
    cached = cache.get_many("similar", sorted(set(keys.values())))
    misses = [s for s in incidents if keys[s["id"]] not in cached]
    if misses:
        batch_ids = {s["id"] for s in incidents}
        with read_session() as session:
            # Ordered like ix_incidents_created_id and with no other filter in SQL, so the plan is a
            # short backward index scan whatever the table's statistics say (merged rows are rare).
            newest = session.execute(
                select(Incident.id, Incident.created_at, Incident.merged_into)
                .order_by(Incident.created_at.desc(), Incident.id.desc()).limit(config.history_size + len(batch_ids))
            ).all()
            ids = [r.id for r in newest if r.id not in batch_ids and r.merged_into is None][:config.history_size]
            kept = set(ids)
            unseen = [r.id for r in newest if r.id in kept and _HISTORY.get(r.id, ("", None))[1] != r.created_at]
            if unseen:  # title and description, once per incident and process
                for r in session.execute(select(Incident.id, Incident.title, Incident.description,
                                                Incident.created_at).where(one_of(Incident.id, unseen))):
                    _HISTORY[r.id] = (text.incident_text(r.title, r.description), r.created_at)
            while len(_HISTORY) > 4 * config.history_size + 1000:
                _HISTORY.pop(next(iter(_HISTORY)))
            ids = [i for i in ids if i in _HISTORY]
            chosen: dict[str, list[tuple[str, float]]] = {}
            if ids:
                left = text.vectors_by_id([s["id"] for s in misses],
                                          [text.incident_text(s["title"], s["description"]) for s in misses])
                right = text.vectors_by_id(ids, [_HISTORY[i][0] for i in ids])
                scores = text.similarity_matrix(left, right)
                for row, top in enumerate(top_columns(scores, config.similar_limit, config.similarity_threshold)):
                    chosen[misses[row]["id"]] = [(ids[j], float(scores[row, j])) for j in top]
            # Status and resolution as they are now, for the chosen ones only.
            picked = {i for pairs in chosen.values() for i, _ in pairs}
            details = {r.id: r for r in session.execute(
                select(Incident.id, Incident.title, Incident.status, Incident.severity, Incident.category,
                       Incident.resolved_at, Incident.root_cause).where(one_of(Incident.id, picked)))} if picked else {}
        fresh: dict[str, list[dict[str, Any]]] = {}
        if chosen:
            for snap in misses:
                fresh[keys[snap["id"]]] = [_similar_entry(details[i], score) for i, score in chosen.get(snap["id"], [])
                                           if i in details]
        else:
            fresh = {keys[s["id"]]: [] for s in misses}
        cache.set_many("similar", fresh)
        cached.update(fresh)
    for snap in incidents:
        results[snap["id"]]["similar_incidents"] = cached.get(keys[snap["id"]], [])


def top_columns(scores: np.ndarray, limit: int, threshold: float) -> list[np.ndarray]:
    """Per row, the columns of its `limit` best scores at or above `threshold`, best first (ties in
    column order): what a stable argsort of every row gives, without sorting whole rows (a
    partition finds each row's `limit`-th best; only the few columns above it are sorted)."""
    rows, columns = scores.shape
    if rows == 0 or columns == 0 or limit <= 0:
        return [np.empty(0, dtype=np.int64) for _ in range(rows)]
    k = min(limit, columns)
    kth = np.partition(scores, columns - k, axis=1)[:, columns - k]
    keep = (scores >= kth[:, None]) & (scores >= threshold)
    found = []
    for row in range(rows):
        candidates = np.flatnonzero(keep[row])
        found.append(candidates[np.argsort(-scores[row, candidates], kind="stable")][:limit])
    return found


# incident id -> (its text for similarity, created_at): the history's text, read once per process.
_HISTORY: dict[str, tuple[str, Any]] = {}


def _similar_entry(candidate: Any, score: float) -> dict[str, Any]:
    """A similar past incident as enrichment records it (resolution details only once resolved)."""
    entry = {"incident_id": candidate.id, "title": candidate.title, "score": round(score, 4),
             "status": candidate.status, "severity": candidate.severity, "category": candidate.category}
    if candidate.resolved_at is not None:
        entry["resolved_at"] = candidate.resolved_at.isoformat()
        entry["root_cause"] = candidate.root_cause
    return entry


# ------------------------------------------------------------------------------------ service, team

def catalog_entry(catalog: Mapping[str, Any], snap: Snapshot) -> dict[str, Any] | None:
    """The catalog entry of the incident's service, else of its resource id (an endpoint, a model)."""
    return catalog.get(snap["service"] or "") or catalog.get(snap.get("resource_id") or "")


def _services(incidents: Sequence[Snapshot], cache: Cache) -> dict[str, dict[str, Any]]:
    return catalog_entries({n for s in incidents for n in (s["service"], s.get("resource_id")) if n}, cache)


def catalog_entries(names: Iterable[str], cache: Cache) -> dict[str, dict[str, Any]]:
    """The catalog entries of these services, through the Redis cache (catalog edits drop their
    entry, so it is never stale): one MGET per batch instead of a database query."""
    names = sorted({n for n in names if n})
    cached = cache.get_many("service", names)
    missing = [n for n in names if n not in cached]
    if missing:
        found = service_catalog.lookup(missing)
        cache.set_many("service", {n: found.get(n) for n in missing})  # absent services cached as null
        cached.update({n: found.get(n) for n in missing})
    return {n: v for n, v in cached.items() if v}


def _service_view(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: entry.get(k) for k in ("name", "owner_team", "tier", "dependencies", "runbook_url", "escalation_policy")}


def _on_call(incidents: Sequence[Snapshot], results: dict[str, dict[str, Any]], catalog: Mapping[str, Any]) -> None:
    """On-call now for the incident's team, from `app.services.oncall.on_call_now(team)` once the
    schedules module exists; until then the enrichment says so instead of guessing."""
    finder: Callable[[str], Any] | None = None
    if importlib.util.find_spec("app.services.oncall") is not None:
        finder = getattr(importlib.import_module("app.services.oncall"), "on_call_now", None)
    for snap in incidents:
        entry = catalog_entry(catalog, snap)
        team = snap["team"] or (entry or {}).get("owner_team")
        if finder is None:
            results[snap["id"]]["on_call"] = {"team": team, "users": [], "note": "no on-call schedules configured"}
        elif team:
            results[snap["id"]]["on_call"] = {"team": team, "users": finder(team)}


# ----------------------------------------------------------------------------------------- metrics

def _metrics(incidents: Sequence[Snapshot], results: dict[str, dict[str, Any]], catalog: Mapping[str, Any],
             cache: Cache, settings: Settings, deadline: float) -> None:
    """One instant query per (service, templated PromQL) of the catalog, shared across the batch."""
    wanted: dict[str, str] = {}  # digest -> query
    per_incident: dict[str, dict[str, str]] = {}
    for snap in incidents:
        entry = catalog_entry(catalog, snap)
        if not entry:
            continue
        for name, template in (entry.get("metrics_queries") or {}).items():
            query = template.replace("{service}", entry["name"])
            digest = _digest(query)
            wanted[digest] = query
            per_incident.setdefault(snap["id"], {})[name] = digest
    if not wanted:
        return
    answers = cache.get_many("metrics", sorted(wanted))
    missing = [d for d in wanted if d not in answers]
    errors: dict[str, str] = {}
    if missing:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise EnrichmentTimeout("enrichment deadline passed before the Prometheus queries")
        base = (settings.prometheus_url or "").rstrip("/")
        fresh: dict[str, Any] = {}
        with httpx.Client(timeout=remaining) as client, \
                ThreadPoolExecutor(max_workers=max(1, settings.enrichment.max_concurrent)) as pool:
            futures = {pool.submit(_instant_query, client, base, wanted[d]): d for d in missing}
            done, pending = wait(futures, timeout=remaining)
            for future in pending:
                future.cancel()
                errors[futures[future]] = "timeout"
            for future in done:
                digest = futures[future]
                try:
                    fresh[digest] = future.result()
                except Exception as exc:  # one failed query makes that metric partial, not the batch
                    errors[digest] = f"{type(exc).__name__}: {exc}"[:300]
        cache.set_many("metrics", fresh)
        answers.update(fresh)
    for incident_id, names in per_incident.items():
        result = results[incident_id]
        for name, digest in names.items():
            if digest in answers:
                result["metrics"][name] = answers[digest]
            else:
                result["partial"] = True
                result["errors"][f"metrics.{name}"] = errors.get(digest, "no answer")
    if errors:
        ENRICHMENT_FAILURES.labels(enricher="metrics").inc(len(errors))


def _instant_query(client: httpx.Client, base: str, query: str) -> dict[str, Any]:
    """GET {PROMETHEUS_URL}/api/v1/query?query=... -> {"query", "value" | "series"}."""
    response = client.get(f"{base}/api/v1/query", params={"query": query})
    response.raise_for_status()
    body = response.json()
    if body.get("status") != "success":
        raise RuntimeError(f"prometheus answered {body.get('errorType')}: {body.get('error')}")
    data = body.get("data") or {}
    result = data.get("result")
    if data.get("resultType") == "scalar" and isinstance(result, list):
        return {"query": query, "value": float(result[1])}
    series = [{"labels": item.get("metric", {}), "value": float(item["value"][1])}
              for item in (result or []) if "value" in item]
    if len(series) == 1:
        return {"query": query, "value": series[0]["value"], "labels": series[0]["labels"]}
    return {"query": query, "series": series}
