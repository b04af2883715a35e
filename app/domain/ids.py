"""Incident identifiers: INC-YYYYMMDD-NNNNN (UTC date of creation, per-day sequence, >= 5 digits)."""

from __future__ import annotations

import re
from datetime import date, datetime, timezone

ID_PREFIX = "INC-"
MIN_DIGITS = 5
INCIDENT_ID_RE = re.compile(rf"^{ID_PREFIX}(\d{{8}})-(\d{{{MIN_DIGITS},}})$")


def format_incident_id(day: date, number: int) -> str:
    if number < 1:
        raise ValueError("incident sequence numbers start at 1")
    return f"{ID_PREFIX}{day:%Y%m%d}-{number:0{MIN_DIGITS}d}"


def incident_id_sql(day: str, number: str) -> str:
    """`format_incident_id` as a Postgres expression, for a writer that draws the number inside its
    statement: `day` is an SQL expression of the 'YYYYMMDD' text, `number` of a positive integer
    (evaluated twice: pass a column, not nextval())."""
    digits = f"({number})::text"
    return f"'{ID_PREFIX}' || {day} || '-' || lpad({digits}, greatest({MIN_DIGITS}, length({digits})), '0')"


def parse_incident_id(value: str) -> tuple[date, int]:
    match = INCIDENT_ID_RE.match(value)
    if not match:
        raise ValueError(f"not an incident id: {value!r}")
    return datetime.strptime(match.group(1), "%Y%m%d").date(), int(match.group(2))


def is_incident_id(value: str) -> bool:
    return bool(INCIDENT_ID_RE.match(value))


def utc_day(moment: datetime | None = None) -> date:
    return (moment or datetime.now(timezone.utc)).astimezone(timezone.utc).date()
