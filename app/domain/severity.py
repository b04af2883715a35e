"""Severity levels and the mapping of source severities onto them."""

from __future__ import annotations

from typing import Mapping

SEVERITIES = ("P0", "P1", "P2", "P3", "P4")
UNKNOWN_SOURCE_SEVERITY = "P3"
# An integration with `routing.auto_page` pages at once for incidents it opens at these levels.
PAGING_SEVERITIES = ("P0", "P1")

# CONTRACT.md decision 5; PagerDuty's `error` and Alertmanager's `warning` included.
DEFAULT_MAPPING: Mapping[str, str] = {
    "critical": "P0",
    "error": "P1",
    "high": "P1",
    "warning": "P2",
    "medium": "P2",
    "low": "P3",
    "info": "P4",
}


def map_source_severity(source_severity: str | None, mapping: Mapping[str, str] = DEFAULT_MAPPING) -> str:
    """P0..P4 for a source severity; a P-level passes through, anything unknown is P3."""
    if not source_severity:
        return UNKNOWN_SOURCE_SEVERITY
    text = source_severity.strip()
    if text.upper() in SEVERITIES:
        return text.upper()
    return mapping.get(text.lower(), UNKNOWN_SOURCE_SEVERITY)


def is_severity(value: str) -> bool:
    return value in SEVERITIES


def severity_rank(severity: str) -> int:
    """0 for P0 (most severe) .. 4 for P4."""
    return SEVERITIES.index(severity)


# ------------------------------------------------------------------------------ who decides severity

# What decided an incident's severity (CONTRACT decision 6, docs/ml.md "Severity policy"):
# `source` the integration's severity through its mapping; `rule` the mapping's fallback (a severity
# the mapping does not know, or none, is P3); `model` the classifier, within the policy; `manual` a
# person (create, PATCH, resolution with a corrected severity); `feedback` a person's feedback.
DECIDERS = ("source", "rule", "model", "manual", "feedback")
# A person's decision stands against every later automatic one.
HUMAN_DECIDERS = ("manual", "feedback")
SOURCE_DECIDED: Mapping[str, object] = {"decided_by": "source"}  # also the column's server default


def mapping_knows(source_severity: str | None, mapping: Mapping[str, str] = DEFAULT_MAPPING) -> bool:
    """Whether the severity is a P-level or a value of the mapping (else the P3 fallback rule applies)."""
    text = (source_severity or "").strip()
    return bool(text) and (text.upper() in SEVERITIES or text.lower() in mapping)


def model_may_decide(confidence: float, threshold: float, grounded: bool) -> bool:
    """Whether a prediction counts at all: confident (`ml.confidence_threshold`) and grounded (the
    event is like what the model learnt from: a metric it knows, or an event type it learnt without
    metrics). An ungrounded event's confidence is an extrapolation."""
    return grounded and confidence >= threshold


def decide_severity(
    mapped: str, source_rule: bool, predicted: str | None, confidence: float | None, threshold: float,
    may_lower: bool, grounded: bool = True,
) -> tuple[str, str, str]:
    """The policy: `(severity, decided_by, why)`.

    The incident starts at the mapped source severity (`mapped`; `source_rule` when it came from the
    fallback rule). A confident (`confidence >= threshold`) and grounded prediction may raise it to the
    predicted level; it may lower it only when `may_lower` (the integration is listed in
    `ml.may_lower`), and then by one level at most, whatever the model said."""
    start = "rule" if source_rule else "source"
    if predicted is None or confidence is None or predicted not in SEVERITIES:
        return mapped, start, "no prediction"
    # The reasons leave the confidence out (it is in `severity_reason` beside them): a batch shares them.
    if not model_may_decide(confidence, threshold, grounded):
        return mapped, start, (f"model said {predicted}, below the confidence threshold {threshold:g}" if grounded
                               else f"model said {predicted}, but the event is unlike its training data")
    step = severity_rank(predicted) - severity_rank(mapped)
    if step == 0:
        return mapped, start, f"model agrees ({predicted})"
    if step < 0:
        return predicted, "model", f"model raised {mapped} to {predicted}"
    if not may_lower:
        return mapped, start, f"model said {predicted}; it may not lower this integration's severity (ml.may_lower)"
    lowered = SEVERITIES[severity_rank(mapped) + 1]
    return lowered, "model", f"model lowered {mapped} to {lowered} (it said {predicted}; one level at most)"


def severity_reason(decided_by: str, *, source_severity: str | None = None, mapped: str | None = None,
                    predicted: str | None = None, confidence: float | None = None, model_version: str | None = None,
                    why: str | None = None, actor: str | None = None) -> dict[str, object]:
    """The `severity_reason` an incident carries (REST, gRPC, timeline): who decided, and on what."""
    reason: dict[str, object] = {"decided_by": decided_by, "source_severity": source_severity,
                                 "mapped_source_severity": mapped, "predicted_severity": predicted,
                                 "confidence": confidence, "model_version": model_version}
    if why:
        reason["why"] = why
    if actor:
        reason["actor"] = actor
    return reason
