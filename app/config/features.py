"""config.yaml sections of the features: `rate_limit`, `ml`, `enrichment`, `correlation`,
`escalation`, `deduplication`, `sla`, and the ENABLE_* flags that switch them. Each dataclass is the one
declaration of its keys; the schema that validates the section is generated from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from marshmallow import RAISE, Schema, fields, post_load, validate

from app.config.schema import Bool, Int, always, load, section_schema
from app.domain import sla
from app.domain.severity import SEVERITIES


@dataclass(frozen=True)
class RateLimitSettings:
    requests_per_minute: int = 1000
    burst: int = 100


@dataclass(frozen=True)
class MLSettings:
    enabled: bool = True
    confidence_threshold: float = field(default=0.7, metadata={"validate": validate.Range(min=0.0, max=1.0)})
    model_path: str = "./models"
    auto_train: bool = True
    training_batch_size: int = 100
    # Integrations (event sources) whose severity a confident model may lower, by one level at most;
    # every other severity the model may only raise (docs/ml.md, "Severity policy").
    may_lower: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnrichmentSettings:
    enabled: bool = True
    enable_historical: bool = True
    enable_service: bool = True
    enable_team: bool = True
    timeout_secs: float = 10.0
    cache_ttl_secs: int = 300
    max_concurrent: int = 5
    similarity_threshold: float = 0.5
    # How many recent incidents the similar-incidents search compares against, and how many it keeps.
    history_size: int = 500
    similar_limit: int = 5


@dataclass(frozen=True)
class CorrelationSettings:
    enabled: bool = True
    time_window_secs: int = 300
    max_group_size: int = 50
    enable_source: bool = True
    enable_type: bool = True
    enable_similarity: bool = True
    enable_tags: bool = True
    enable_service: bool = True
    # Weighted score of the enabled strategies (normalised by the sum of enabled weights).
    score_threshold: float = 0.5
    source_weight: float = 0.15
    type_weight: float = 0.2
    similarity_weight: float = 0.3
    tags_weight: float = 0.15
    service_weight: float = 0.2
    # Candidates compared per batch: the most recent incidents inside the time window.
    max_candidates: int = 500


@dataclass(frozen=True)
class EscalationSettings:
    enabled: bool = True
    # `escalate_after_secs` of a policy level that gives none (app/services/escalation.py snapshot_of)
    default_timeout_secs: int = field(default=300, metadata={"validate": validate.Range(min=1, max=7 * 86_400)})
    # Analytics (docs/escalation.md "Analytics"): a range whose rolled-up days hold more incidents
    # than this is answered from the daily rollup (percentiles estimated from its histograms);
    # smaller ranges are computed exactly from the incidents.
    analytics_exact_max_incidents: int = field(default=100_000, metadata={"validate": validate.Range(min=0)})
    # A closed UTC day is rolled up once it ended this long ago (writes still in flight at midnight).
    analytics_rollup_settle_secs: int = field(default=600, metadata={"validate": validate.Range(min=0, max=86_400)})


@dataclass(frozen=True)
class DeduplicationSettings:
    window_secs: int = 900
    fingerprint_fields: tuple[str, ...] = ("source", "event_type", "title", "resource_ids")


class _SlaSchema(Schema):
    """`sla: {acknowledge_secs: {P0: 300, ...}, resolve_secs: {P0: 900, ...}}`: any severity given
    replaces its default target (app/domain/sla.py; docs/escalation.md)."""

    class Meta:
        unknown = RAISE

    acknowledge_secs = fields.Dict(keys=fields.String(validate=validate.OneOf(SEVERITIES)),
                                   values=Int(validate=validate.Range(min=1)))
    resolve_secs = fields.Dict(keys=fields.String(validate=validate.OneOf(SEVERITIES)),
                               values=Int(validate=validate.Range(min=1)))

    @post_load
    def _build(self, data: dict[str, Any], **_: Any) -> sla.SlaTargets:
        return sla.targets(data.get("acknowledge_secs"), data.get("resolve_secs"))


# Keys of the reference README's config.yaml that this system has no setting for: the value that
# describes what the system always does is accepted, any other is an error rather than silently
# ignored (why, per key: docs/foundation.md, "Configuration").
SECTIONS = {
    "rate_limit": section_schema(RateLimitSettings),
    "ml": section_schema(MLSettings),
    "enrichment": section_schema(EnrichmentSettings, accepted={"async_enrichment": Bool(validate=always(
        True, "enrichment always runs asynchronously, in the pipeline's worker"))}),
    "correlation": section_schema(CorrelationSettings, accepted={"min_incidents": Int(validate=always(
        2, "a correlation group always starts with two incidents"))}),
    "escalation": section_schema(EscalationSettings),
    "deduplication": section_schema(DeduplicationSettings, accepted={"fingerprint_enabled": Bool(validate=always(
        True, "ingest always joins an event to the active incident with its fingerprint"))}),
    "sla": _SlaSchema(),
}

# ENABLE_* environment flag -> the section whose `enabled` it overrides.
FLAGS = {
    "enable_ml_classification": ("ENABLE_ML_CLASSIFICATION", "ml"),
    "enable_enrichment": ("ENABLE_ENRICHMENT", "enrichment"),
    "enable_correlation": ("ENABLE_CORRELATION", "correlation"),
    "enable_escalation": ("ENABLE_ESCALATION", "escalation"),
}

_FLAG_SCHEMA = Schema.from_dict({variable: Bool() for variable, _ in FLAGS.values()})()


def load_features(tree: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The feature sections (as Settings keyword arguments) and their ENABLE_* flags: the
    environment flag wins over the section's `enabled`."""
    result: dict[str, Any] = {name: load(schema, tree.get(name) or {}, name) for name, schema in SECTIONS.items()}
    given = load(_FLAG_SCHEMA, {variable: env[variable] for variable, _ in FLAGS.values() if variable in env})
    for attribute, (variable, section) in FLAGS.items():
        result[attribute] = given[variable] if variable in given else result[section].enabled
    return result
