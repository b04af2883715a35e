"""Every door validates events with `load_event` (REST, WebSocket and gRPC), whose fast path for
plain events must agree with marshmallow: whatever it accepts, the schema accepts and turns into the
same NewEvent; whatever the schema refuses, it refuses."""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest
from marshmallow import ValidationError

os.environ.setdefault("DATA_DIR", "/tmp/im-unit-doors")

from api.schemas import EVENT_SCHEMA, to_new_event, validate_events  # noqa: E402

GUIDE_EVENT: dict[str, Any] = {
    "type": "event", "event_id": "edge-2025-009876", "source": "llm-edge-agent", "timestamp": "2025-11-11T10:40:00Z",
    "event_type": "alert", "category": "availability", "title": "Rate Limit Exceeded",
    "description": "Tenant exceeded rate limit threshold", "severity": "medium",
    "resource": {"type": "tenant", "id": "tenant-456", "name": "Acme Corp"},
    "metrics": {"current_rpm": 12500, "limit_rpm": 10000, "throttled_requests": 2500},
    "tags": {"environment": "production", "edge_location": "edge-us-east-1-a"},
}

MUTATIONS: list[tuple[str, Any]] = [
    ("event_id", ""), ("event_id", "x" * 201), ("event_id", 5), ("event_id", None), ("title", ""), ("title", "t" * 501),
    ("title", ["t"]), ("severity", ""), ("severity", None), ("source", "s" * 101), ("source", ""),
    ("timestamp", "2025-11-11"), ("timestamp", "2025-11-11T10:40:00"), ("timestamp", "2025-13-11T10:40:00Z"),
    ("timestamp", "2025-11-11T10:40:00.123456+02:00"), ("timestamp", "2025-11-11T10:40:00.1Z"),
    ("timestamp", "yesterday"), ("timestamp", 1731321600), ("timestamp", None), ("timestamp", "2025-11-11T24:00:00Z"),
    ("resource", {"type": "tenant"}), ("resource", {"id": "x"}), ("resource", {"type": "", "id": "x"}),
    ("resource", {"type": "t", "id": "i", "name": None}), ("resource", {"type": "t", "id": "i", "extra": [1]}),
    ("resource", {"type": "t", "id": "i", "metadata": {"a": "b"}}),
    ("resource", {"type": "t", "id": "i", "metadata": 3}),
    ("resource", "tenant-456"), ("resource", None),
    ("metrics", {"a": "1"}), ("metrics", {"a": True}), ("metrics", {"a": None}), ("metrics", {"a": 1.5, "b": -2}),
    ("metrics", []), ("tags", {"a": {"b": 1}}), ("tags", {"a": [1]}), ("tags", {"a": 1, "b": True, "c": "x"}),
    ("tags", "x"), ("description", None), ("description", 3), ("description", ""),
    ("service", "s" * 201), ("service", "chat-api"), ("dedup_key", ""), ("dedup_key", "k"), ("dedup_key", 7),
    ("event_type", None), ("category", "c" * 101), ("source_version", "2.1.0"),
    ("payload", {"any": "thing"}), ("payload", None), ("tags", {"a": None}), ("unknown_field", {"kept": True}),
    ("title", "   "), ("event_id", "\t"), ("severity", " "), ("source", "  "), ("description", "  "),
    ("metrics", {"a": float("nan")}), ("metrics", {"a": float("inf")}), ("metrics", {"a": -float("inf")}),
    ("title", "a\x00b"), ("tags", {"a\x00": "x"}), ("tags", {"a": "x\x00"}), ("payload", {"k": ["\x00"]}),
    ("resource", {"type": "t", "id": "i", "metadata": {"m": "\x00"}}), ("unknown_field", "\x00"),
    ("event_type", "e" * 101), ("event_type", "e" * 100), ("resource", {"type": "t" * 101, "id": "i"}),
    ("resource", {"type": "t", "id": "i" * 201}), ("resource", {"type": "t", "id": "i", "name": "n" * 501}),
]


def cases() -> list[dict[str, Any]]:
    out = [copy.deepcopy(GUIDE_EVENT)]
    for name, value in MUTATIONS:
        event = copy.deepcopy(GUIDE_EVENT)
        event[name] = value
        out.append(event)
    for name in list(GUIDE_EVENT):
        event = copy.deepcopy(GUIDE_EVENT)
        del event[name]
        out.append(event)
    return out


@pytest.mark.parametrize("event", cases(), ids=lambda e: str(sorted(set(e) ^ set(GUIDE_EVENT)) or e["event_id"])[:60])
def test_fast_path_never_disagrees_with_the_schema(event):
    body = event if "source" in event else {**event, "source": "llm-edge-agent"}  # the door's default
    try:
        expected = to_new_event(EVENT_SCHEMA.load(body), event)
    except ValidationError:
        expected = None
    valid, positions, rejected = validate_events([event], default_source="llm-edge-agent")
    assert valid == ([expected] if expected else [])
    assert positions == ([0] if expected else [])
    assert len(rejected) == (0 if expected else 1)


def test_the_guide_event_takes_the_fast_path():
    from api.schemas import _plainly_valid

    assert _plainly_valid(GUIDE_EVENT) is not None
