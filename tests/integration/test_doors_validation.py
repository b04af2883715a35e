"""One validator for the event shape, whatever the door: the same bad events sent through REST (single
and batch), the WebSocket and gRPC get the same field errors — REST's 422 `error.details`, the
WebSocket's `invalid_event` frame `details`, gRPC's INVALID_ARGUMENT with `google.rpc.BadRequest`
field violations — and nothing is stored. The doors run as they do in production: the Flask app, the
gunicorn web process, a grpcio server on loopback, on real Postgres and Redis."""

from __future__ import annotations

import copy
import json
from typing import Any, Iterator

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from app.services.auth import create_token
from tests.integration import test_grpc
from tests.integration.test_ws import counts, edge_event, open_socket, receive, running_web

MISSING = "Missing data for required field."

grpc_server = test_grpc.grpc_server  # the fixture: a grpcio server on loopback


def _without(name: str) -> dict[str, Any]:
    event = edge_event(1)
    del event[name]
    return event


# (case, event, expected details): every value here can be said by all three doors (gRPC's proto3
# has no null, no nested tags, and cannot tell an empty string from an absent one).
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("no title", _without("title"), {"title": [MISSING]}),
    ("no severity", _without("severity"), {"severity": [MISSING]}),
    ("no event_id", _without("event_id"), {"event_id": [MISSING]}),
    ("blank title", edge_event(2, title="   "), {"title": ["must not be blank"]}),
    ("event_type over the column", edge_event(3, event_type="e" * 101),
     {"event_type": ["Longer than maximum length 100."]}),
    ("severity too long", edge_event(4, severity="s" * 51), {"severity": ["Length must be between 1 and 50."]}),
    ("event_id too long", edge_event(5, event_id="e" * 201), {"event_id": ["Length must be between 1 and 200."]}),
    ("title too long", edge_event(6, title="t" * 501), {"title": ["Length must be between 1 and 500."]}),
    ("category too long", edge_event(7, category="c" * 101), {"category": ["Longer than maximum length 100."]}),
    ("service too long", edge_event(8, service="s" * 201), {"service": ["Longer than maximum length 200."]}),
    ("resource without id", edge_event(9, resource={"type": "tenant"}), {"resource": {"id": [MISSING]}}),
    ("resource type too long", edge_event(10, resource={"type": "t" * 101, "id": "x"}),
     {"resource": {"type": ["Length must be between 1 and 100."]}}),
    ("bad timestamp", edge_event(11, timestamp="yesterday"), {"timestamp": ["Not a valid datetime."]}),
    ("two bad fields", {**_without("title"), "source_version": "v" * 51},
     {"title": [MISSING], "source_version": ["Longer than maximum length 50."]}),
]


def flat(details: dict[str, Any], prefix: str = "") -> dict[str, list[str]]:
    """{"resource": {"id": [m]}} -> {"resource.id": [m]}: how gRPC's field violations name fields."""
    out: dict[str, list[str]] = {}
    for name, value in details.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = list(value)
    return out


@pytest.fixture(scope="module")
def web(test_env: dict[str, str]) -> Iterator[str]:
    with running_web() as base:
        yield base


def via_rest(client: Any, key: str, event: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/v1/events", json=event, headers={"X-API-Key": key})
    assert response.status_code == 422, response.get_json()
    body = response.get_json()["error"]
    assert body["code"] == "validation_failed"
    return body["details"]


def via_rest_batch(client: Any, key: str, event: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/v1/events", json={"events": [event]}, headers={"X-API-Key": key})
    assert response.status_code == 202, response.get_json()
    [result] = response.get_json()["results"]
    assert result["status"] == "rejected"
    return result["error"]


def via_ws(web: str, event: dict[str, Any]) -> dict[str, Any]:
    with open_socket(web.replace("http://", "ws://") + "/ws/events") as ws:
        ws.send(json.dumps({"type": "event", **event}))
        frame = receive(ws)
    assert (frame["type"], frame["code"]) == ("error", "invalid_event"), frame
    assert frame["event_id"] == event.get("event_id", "")
    return frame["details"]


def via_grpc(target: str, event: dict[str, Any]) -> dict[str, list[str]]:
    import proto

    pb2, pb2_grpc = proto.load()
    metrics = event.pop("metrics", {})
    request = json_format.ParseDict(event, pb2.CreateIncidentRequest())
    request.metrics.update(metrics)  # ParseDict takes NaN only as a quoted string
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as info:
        pb2_grpc.IncidentServiceStub(channel).CreateIncident(
            request, metadata=(("authorization", f"Bearer {create_token('t', 60)}"),), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(info.value)
    assert status is not None and status.message == info.value.details()
    [detail] = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    violations: dict[str, list[str]] = {}
    for violation in bad_request.field_violations:
        violations.setdefault(violation.field, []).append(violation.description)
        assert f"{violation.field}: {violation.description}" in status.message  # what grpcurl shows
    return violations


@pytest.mark.parametrize("case, event, expected", CASES, ids=[c[0] for c in CASES])
def test_the_same_bad_event_gets_the_same_field_errors_through_every_door(
        case, event, expected, client, make_key, web, grpc_server):
    key = make_key("event:create")
    assert via_rest(client, key, copy.deepcopy(event)) == expected
    assert via_rest_batch(client, key, copy.deepcopy(event)) == expected
    assert via_ws(web, copy.deepcopy(event)) == expected
    assert via_grpc(grpc_server, copy.deepcopy(event)) == flat(expected)
    assert counts() == (0, 0)


def test_nul_and_non_finite_metrics_are_refused_by_the_doors_that_can_carry_them(web, grpc_server, db):
    """JSON over REST cannot carry NaN (400 malformed_json) and REST refuses `\\u0000` for the whole
    body; the WebSocket's JSON and gRPC's proto can carry both, and the shared validator refuses them
    per field instead of letting Postgres fail the whole transaction."""
    nul = edge_event(20, description="a\x00b")
    nan = edge_event(21, metrics={"current_rpm": float("nan")})
    assert via_ws(web, nul) == {"description": ["strings must not contain NUL (\\u0000) characters"]}
    assert via_grpc(grpc_server, nul) == {"description": ["strings must not contain NUL (\\u0000) characters"]}
    assert via_ws(web, nan) == {"metrics": ["metric 'current_rpm' must be a finite number"]}
    assert via_grpc(grpc_server, nan) == {"metrics": ["metric 'current_rpm' must be a finite number"]}
    assert counts() == (0, 0)
