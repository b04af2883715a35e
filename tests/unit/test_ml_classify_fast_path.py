"""`POST /api/v1/ml/classify`'s fast path loads exactly what ClassifyEventSchema loads, and hands every
event it is not sure of to the schema (which then answers with its field errors)."""

from __future__ import annotations

from typing import Any

import pytest
from marshmallow import ValidationError

from api.rest.ml import EVENT, _loaded_input, _plain_input

VALID: list[dict[str, Any]] = [
    {"title": "x"},
    {"title": "Latency Spike Detected", "description": "p95 above threshold", "source": "llm-sentinel",
     "event_type": "anomaly", "category": "performance", "severity": "high", "resource": {"type": "endpoint", "id": 7},
     "tags": {"environment": "production", "n": 1, "flag": True, "list": [1]}, "metrics": {"p95_latency_ms": 5400,
                                                                                            "ratio": 2.7}},
    {"title": "t", "resource_type": "gpu_node", "resource": {"type": "model"}, "unknown_field": [1, 2]},
    {"title": "t" * 500, "description": "", "severity": "s" * 50, "metrics": {}, "tags": {}},
]
NOT_PLAIN: list[Any] = [
    {}, {"title": ""}, {"title": "t" * 501}, {"title": None}, {"title": 5}, {"title": "t", "severity": ""},
    {"title": "t", "metrics": {"m": True}}, {"title": "t", "metrics": {"m": "high"}}, {"title": "t", "metrics": []},
    {"title": "t", "tags": "x"}, {"title": "t", "resource": "x"}, {"title": "t", "resource": {"type": 5}},
    {"title": "t", "source": None}, {"title": "t", "tags": {"none": None}},
    {"title": "t", "description": "d" * 100_001}, ["not", "an", "object"],
]


@pytest.mark.parametrize("event", VALID)
def test_plain_events_load_as_the_schema_loads_them(event: dict[str, Any]) -> None:
    assert _plain_input(event) == _loaded_input(EVENT.load(event))


@pytest.mark.parametrize("event", NOT_PLAIN)
def test_everything_else_goes_to_the_schema(event: Any) -> None:
    assert _plain_input(event) is None
    with pytest.raises(ValidationError):
        EVENT.load(event)
