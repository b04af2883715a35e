"""Who is on call: pure schedule math, no database.

A schedule has layers and overrides. A layer rotates through its participants: each shift lasts
`rotation_length` `rotation_unit`s and starts at `handoff_time` in the layer's IANA time zone.
Day and week rotations hand off at the local wall-clock time, so across a DST change the shift is
23 or 25 hours long and the handoff stays at 09:00 local; hour rotations are fixed durations.
A later layer covers an earlier one where it has a shift; an override beats every layer (the last
override listed wins). See docs/escalation.md."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Mapping, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ROTATION_UNITS = ("hours", "days", "weeks")


@dataclass(frozen=True)
class OnCall:
    user: str
    source: str  # "override" or "layer:<name>"
    shift_start: datetime
    shift_end: datetime | None


def zone(name: str) -> ZoneInfo:
    """The IANA zone; ValueError naming it when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA time zone {name!r}") from None


def parse_handoff(value: str) -> time:
    """'HH:MM' (24 h) -> time; ValueError otherwise."""
    try:
        hours, minutes = value.split(":")
        return time(int(hours), int(minutes))
    except (ValueError, AttributeError):
        raise ValueError(f"expected HH:MM, got {value!r}") from None


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _instant(value: Any) -> datetime:
    return _utc(value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00")))


def _start_date(value: Any) -> date:
    return value if isinstance(value, date) and not isinstance(value, datetime) else date.fromisoformat(str(value))


def _layer_shift(layer: Mapping[str, Any], default_zone: str, at: datetime) -> tuple[int, datetime, datetime] | None:
    """(shift index, start, end) of the layer's shift covering `at`, or None before the layer starts."""
    tz = zone(layer.get("time_zone") or default_zone)
    handoff = parse_handoff(layer.get("handoff_time", "00:00"))
    length = int(layer.get("rotation_length", 1))
    unit = layer.get("rotation_unit", "days")
    first = datetime.combine(_start_date(layer["start"]), handoff, tzinfo=tz)
    if at < first:
        return None
    if unit == "hours":  # a fixed duration: DST does not move it
        step = timedelta(hours=length)
        index = int((at - first) // step)
        return index, _utc(first + step * index), _utc(first + step * (index + 1))
    step_days = length * (7 if unit == "weeks" else 1)
    local_day = at.astimezone(tz).date()
    index = (local_day - first.date()).days // step_days

    def boundary(k: int) -> datetime:  # the k-th handoff at local wall-clock time
        return _utc(datetime.combine(first.date() + timedelta(days=k * step_days), handoff, tzinfo=tz))

    if at < boundary(index):
        index -= 1
    return index, boundary(index), boundary(index + 1)


def on_call_at(schedule: Mapping[str, Any], at: datetime) -> OnCall | None:
    """Who is on call at `at` (any aware datetime), or None when nobody is."""
    at = _utc(at)
    for override in reversed(list(schedule.get("overrides") or [])):
        start, end = _instant(override["start"]), _instant(override["end"])
        if start <= at < end:
            return OnCall(override["user"], "override", start, end)
    layers: Sequence[Mapping[str, Any]] = schedule.get("layers") or []
    for layer in reversed(list(layers)):
        participants = layer.get("participants") or []
        if not participants:
            continue
        end = layer.get("end")
        if end is not None and at >= _instant(end):
            continue
        shift = _layer_shift(layer, schedule["time_zone"], at)
        if shift is None:
            continue
        index, start, shift_end = shift
        return OnCall(participants[index % len(participants)], f"layer:{layer.get('name') or layers.index(layer)}",
                      start, shift_end)
    return None
