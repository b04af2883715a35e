"""The stored payload of a gRPC CreateIncidentRequest is its proto3 JSON (original field names),
without encrypted_payload; bad requests are refused before anything is stored."""

from __future__ import annotations

import os

import pytest
from google.protobuf import json_format
from marshmallow import ValidationError

os.environ.setdefault("DATA_DIR", "/tmp/im-unit-doors")

import proto  # noqa: E402
from api.grpc.servicer import request_payload, request_to_event  # noqa: E402

pb2, _ = proto.load()

REQUESTS = [
    pb2.CreateIncidentRequest(event_id="e1", source="llm-shield", title="t", severity="critical"),
    pb2.CreateIncidentRequest(
        event_id="shield-2025-005678", source="llm-shield", source_version="2.1.0", timestamp="2025-11-11T10:35:00Z",
        event_type="violation", category="security", title="Prompt Injection Detected", description="blocked",
        severity="critical", resource=pb2.Resource(type="model", id="model-gpt4-prod", name="GPT-4 Production",
                                                   metadata={"model_version": "gpt-4-0613"}),
        metrics={"confidence_score": 0.95, "attack_vectors": 3}, tags={"environment": "production"},
        encrypted_payload=b"\x00secret", service="chat-api", dedup_key="k1"),
    pb2.CreateIncidentRequest(event_id="e3", source="s", title="t", severity="low",
                              resource=pb2.Resource(type="x", id="y")),
]


@pytest.mark.parametrize("request_message", REQUESTS)
def test_payload_is_proto3_json_without_the_encrypted_payload(request_message):
    expected = json_format.MessageToDict(request_message, preserving_proto_field_name=True)
    expected.pop("encrypted_payload", None)
    assert request_payload(request_message) == expected


def test_encrypted_payload_is_kept_apart():
    event = request_to_event(REQUESTS[1])
    assert event.encrypted_payload == b"\x00secret" and "encrypted_payload" not in event.raw
    assert event.severity == "critical" and event.resource == {"type": "model", "id": "model-gpt4-prod",
                                                               "name": "GPT-4 Production",
                                                               "metadata": {"model_version": "gpt-4-0613"}}


@pytest.mark.parametrize("fields, errors", [
    ({"title": ""}, {"title": ["Missing data for required field."]}),  # proto3: empty is absent
    ({"title": "  "}, {"title": ["must not be blank"]}),
    ({"metrics": {"x": float("nan")}}, {"metrics": ["metric 'x' must be a finite number"]}),
    ({"metrics": {"x": float("inf")}}, {"metrics": ["metric 'x' must be a finite number"]}),
    ({"resource": pb2.Resource(type="model")}, {"resource": {"id": ["Missing data for required field."]}}),
    ({"timestamp": "11/11/2025 10:35"}, {"timestamp": ["Not a valid datetime."]}),
    ({"event_id": "e" * 201}, {"event_id": ["Length must be between 1 and 200."]}),
    ({"event_type": "e" * 101}, {"event_type": ["Longer than maximum length 100."]}),
    ({"description": "a\x00b"}, {"description": ["strings must not contain NUL (\\u0000) characters"]}),
])
def test_bad_requests_get_the_rest_schema_errors(fields, errors):
    base = dict(event_id="e1", source="llm-shield", title="t", severity="critical")
    with pytest.raises(ValidationError) as info:
        request_to_event(pb2.CreateIncidentRequest(**{**base, **fields}))
    assert info.value.messages == errors
