"""How the system writes a moment: ISO 8601 in UTC with a `Z` (`2026-12-06T02:30:00.123456Z`), in
every response, wire message and log line (docs/foundation.md, "One definition each")."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import overload


@overload
def iso(value: datetime) -> str: ...


@overload
def iso(value: None) -> None: ...


@overload
def iso(value: datetime | None) -> str | None: ...


def iso(value: datetime | None) -> str | None:
    """`value` in UTC as ISO 8601 with `Z`; None stays None (an unset timestamp)."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def iso_from_epoch(seconds: float) -> str:
    """A Unix timestamp (time.time()) written like `iso`."""
    return iso(datetime.fromtimestamp(seconds, timezone.utc))


def now_iso() -> str:
    """The current moment written like `iso`."""
    return iso(datetime.now(timezone.utc))
