"""Incident identifiers: INC-YYYYMMDD-NNNNN (UTC date of creation, per-day sequence, >= 5 digits)."""

from __future__ import annotations

import re
from datetime import date, datetime, timezone

INCIDENT_ID_RE = re.compile(r"^INC-(\d{8})-(\d{5,})$")


def format_incident_id(day: date, number: int) -> str:
    if number < 1:
        raise ValueError("incident sequence numbers start at 1")
    return f"INC-{day:%Y%m%d}-{number:05d}"


def parse_incident_id(value: str) -> tuple[date, int]:
    match = INCIDENT_ID_RE.match(value)
    if not match:
        raise ValueError(f"not an incident id: {value!r}")
    return datetime.strptime(match.group(1), "%Y%m%d").date(), int(match.group(2))


def is_incident_id(value: str) -> bool:
    return bool(INCIDENT_ID_RE.match(value))


def utc_day(moment: datetime | None = None) -> date:
    return (moment or datetime.now(timezone.utc)).astimezone(timezone.utc).date()
