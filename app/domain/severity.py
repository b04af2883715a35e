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
