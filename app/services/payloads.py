"""What the inbound formats (Alertmanager, PagerDuty, the WebSocket codec) share: the error that
carries field-by-field details, RFC 3339 times as senders write them, and label/annotation maps."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Mapping


class InvalidPayload(ValueError):
    """What a door received does not match its format; `details` is {field: [messages]}."""

    def __init__(self, message: str, details: Mapping[str, Any] | None = None, code: str = "validation_failed") -> None:
        super().__init__(message)
        self.message = message
        self.details = dict(details or {})
        self.code = code


def parse_time(value: Any, field_name: str) -> datetime | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise InvalidPayload(f"{field_name} must be an RFC 3339 time", {field_name: ["expected an RFC 3339 string"]})
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Go (Alertmanager) writes nanoseconds; Python keeps microseconds.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits):]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidPayload(f"{field_name} is not an RFC 3339 time",
                             {field_name: [f"not an RFC 3339 time: {value!r}"]}) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def string_map(value: Any, field_name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidPayload(f"{field_name} must be an object of strings",
                             {field_name: ["expected an object of strings"]})
    return {str(k): v for k, v in value.items()}
