"""Pipeline metrics (names as in the reference README and issue 4)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from app.metrics import LATENCY_BUCKETS

CORRELATION_GROUPS_CREATED = Counter(
    "incident_manager_correlation_groups_created_total", "Correlation groups opened by the pipeline"
)
ENRICHMENT_DURATION = Histogram(
    "incident_manager_enrichment_duration_seconds", "Enrichment time per batch, per enricher", ["enricher"],
    buckets=LATENCY_BUCKETS,
)
ENRICHMENT_CACHE = Counter(
    "incident_manager_enrichment_cache_lookups_total", "Enrichment cache lookups", ["enricher", "result"]
)
ENRICHMENT_CACHE_HIT_RATE = Gauge(
    "incident_manager_enrichment_cache_hit_rate", "Share of enrichment lookups answered from the cache "
    "(this process, since start)", multiprocess_mode="livemax",
)
ENRICHMENT_FAILURES = Counter(
    "incident_manager_enrichment_failures_total", "Enrichers that failed or timed out (partial enrichment)",
    ["enricher"],
)
EVENT_TO_INCIDENT_LATENCY = Histogram(
    "incident_manager_event_to_incident_latency_seconds",
    "From ingest accept to the incident row written by the pipeline (dedup..route done)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)
PIPELINE_BATCH_SIZE = Histogram(
    "incident_manager_pipeline_batch_events", "Events per pipeline batch",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000),
)

_hits = 0
_lookups = 0


def record_cache(enricher: str, hits: int, misses: int) -> None:
    """Count cache hits/misses and refresh this process's hit-rate gauge."""
    global _hits, _lookups
    if hits:
        ENRICHMENT_CACHE.labels(enricher=enricher, result="hit").inc(hits)
    if misses:
        ENRICHMENT_CACHE.labels(enricher=enricher, result="miss").inc(misses)
    _hits += hits
    _lookups += hits + misses
    if _lookups:
        ENRICHMENT_CACHE_HIT_RATE.set(_hits / _lookups)
