"""Pure parsing of the doors' payloads: Alertmanager v4 (app/services/alertmanager.py), PagerDuty Events v2
(app/services/pagerduty.py), WebSocket frames (api/ws_codec.py)."""

from __future__ import annotations

import base64
import gzip
import json

import pytest

from api.ws_codec import decode_ws_frame
from app.config import load_settings
from app.services.alertmanager import ALERTMANAGER_SOURCE, parse_alertmanager
from app.services.incidents import dedup_fingerprint
from app.services.pagerduty import parse_pagerduty
from app.services.payloads import InvalidPayload

SETTINGS = load_settings({"DATA_DIR": "/tmp/im-unit-doors", "JWT_SECRET": "x" * 40, "API_KEY_SECRET": "y" * 40,
                          "WS_MAX_MESSAGE_BYTES": "65536", "MAX_BATCH_EVENTS": "100"})

ALERT = {
    "status": "firing",
    "labels": {"alertname": "HighLatency", "severity": "critical", "service": "chat-api", "env": "prod"},
    "annotations": {"summary": "p95 over 5s", "description": "p95 latency is 5.4s"},
    "startsAt": "2025-11-11T10:30:00.123456789Z",
    "endsAt": "0001-01-01T00:00:00Z",
    "generatorURL": "http://prometheus/graph",
    "fingerprint": "a1b2c3d4e5f60718",
}


def am_payload(*alerts: dict) -> dict:
    return {"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing", "receiver": "im",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
            "alerts": list(alerts)}


def test_alertmanager_labels_and_annotations_map_onto_the_event():
    batch = parse_alertmanager(am_payload(ALERT))
    [event] = batch.firing
    assert batch.resolved == []
    assert event.source == ALERTMANAGER_SOURCE
    assert event.title == "p95 over 5s"  # the summary annotation, written for humans
    assert event.tags["alertname"] == "HighLatency"  # the alertname stays, in the tags
    assert event.severity == "critical"
    assert event.service == "chat-api"
    assert event.tags["env"] == "prod"
    assert event.description == "p95 latency is 5.4s"
    assert event.dedup_key == "a1b2c3d4e5f60718"
    assert event.event_id == "a1b2c3d4e5f60718:2025-11-11T10:30:00.123456789Z"
    assert event.timestamp is not None and event.timestamp.microsecond == 123456
    assert event.raw == ALERT


@pytest.mark.parametrize("annotations, title, description", [
    ({}, "HighLatency", ""),  # no summary: the bare alertname
    ({"description": "d"}, "HighLatency", "d"),
    ({"summary": "", "description": "d"}, "HighLatency", "d"),
    ({"title": "Custom", "summary": "s", "description": "d"}, "Custom", "s\n\nd"),  # annotations.title first
    ({"summary": "s" * 600}, "s" * 500, "s" * 600),  # cut at the column, kept whole in the description
])
def test_alertmanager_title_is_the_summary_when_present(annotations, title, description):
    [event] = parse_alertmanager(am_payload({**ALERT, "annotations": annotations})).firing
    assert (event.title, event.description, event.tags["alertname"]) == (title, description, "HighLatency")


def test_alertmanager_resolved_alerts_become_resolutions_by_fingerprint():
    batch = parse_alertmanager(am_payload({**ALERT, "status": "resolved"}))
    assert batch.firing == []
    assert batch.resolved == [("a1b2c3d4e5f60718", "HighLatency")]


@pytest.mark.parametrize("payload, field", [
    ({"version": "3", "alerts": [ALERT]}, "version"),
    ({"version": "4", "alerts": []}, "alerts"),
    (am_payload({**ALERT, "status": "pending"}), "alerts.0.status"),
    (am_payload({**ALERT, "labels": {"severity": "critical"}}), "alerts.0.labels"),
    (am_payload({**ALERT, "startsAt": "yesterday"}), "alerts.0.startsAt"),
    (am_payload({**ALERT, "labels": {"alertname": "X", "n": 1}}), "alerts.0.labels"),
    # Labels longer than the columns they land in are refused by name, not stored as a 500.
    (am_payload({**ALERT, "labels": {"alertname": "X", "service": "s" * 201}}), "alerts.0.labels.service"),
    (am_payload({**ALERT, "labels": {"alertname": "X", "job": "j" * 201}}), "alerts.0.labels.job"),
    (am_payload({**ALERT, "labels": {"alertname": "X", "category": "c" * 101}}), "alerts.0.labels.category"),
    (am_payload({**ALERT, "labels": {"alertname": "X", "severity": "v" * 51}}), "alerts.0.labels.severity"),
    (am_payload({**ALERT, "fingerprint": "f" * 200}), "alerts.0.fingerprint"),
])
def test_alertmanager_bad_payloads_name_the_field(payload, field):
    with pytest.raises(InvalidPayload) as info:
        parse_alertmanager(payload)
    assert field in info.value.details


def test_pagerduty_trigger_maps_summary_severity_and_dedup_key():
    command = parse_pagerduty({
        "routing_key": "im_x", "event_action": "trigger", "dedup_key": "db-down",
        "payload": {"summary": "DB down", "source": "db-1", "severity": "error", "component": "postgres",
                    "custom_details": {"category": "availability"}},
    })
    assert command.action == "trigger" and command.dedup_key == "db-down"
    assert command.event is not None
    assert command.event.title == "DB down" and command.event.severity == "error"
    assert command.event.service == "postgres" and command.event.category == "availability"
    assert command.event.dedup_key == "db-down" and command.event.source == "pagerduty"


def test_pagerduty_trigger_without_dedup_key_gets_one():
    command = parse_pagerduty({"event_action": "trigger",
                               "payload": {"summary": "s", "source": "x", "severity": "info"}})
    assert len(command.dedup_key) == 32


@pytest.mark.parametrize("body, field", [
    ({"event_action": "page"}, "event_action"),
    ({"event_action": "resolve"}, "dedup_key"),
    ({"event_action": "trigger", "payload": {"source": "x", "severity": "info"}}, "payload.summary"),
    ({"event_action": "trigger", "payload": {"summary": "s", "source": "x", "severity": "P1"}}, "payload.severity"),
    ({"event_action": "trigger"}, "payload"),
])
def test_pagerduty_invalid_events(body, field):
    with pytest.raises(InvalidPayload) as info:
        parse_pagerduty(body)
    assert field in info.value.details


def test_dedup_fingerprint_is_per_source():
    assert dedup_fingerprint("pagerduty", "k") != dedup_fingerprint("alertmanager", "k")


EVENTS = [{"event_id": f"edge-{i}", "title": "Rate Limit Exceeded", "severity": "medium"} for i in range(87)]


def test_ws_batch_plain_array():
    frame = decode_ws_frame(json.dumps({"type": "batch", "events": EVENTS, "count": 87}), SETTINGS)
    assert frame.type == "batch" and frame.events == EVENTS


def test_ws_batch_base64_gzip_string():
    blob = base64.b64encode(gzip.compress(json.dumps(EVENTS).encode())).decode()
    frame = decode_ws_frame(json.dumps({"type": "batch", "compression": "gzip", "events": blob}), SETTINGS)
    assert frame.events == EVENTS


def test_ws_batch_pako_byte_indexed_object():
    data = gzip.compress(json.dumps(EVENTS).encode())
    indexed = {str(i): b for i, b in enumerate(data)}
    frame = decode_ws_frame(json.dumps({"type": "batch", "compression": "gzip", "events": indexed, "count": 87}),
                            SETTINGS)
    assert frame.events == EVENTS


def test_ws_binary_frame_is_a_gzipped_message():
    frame = decode_ws_frame(gzip.compress(json.dumps({"type": "batch", "events": EVENTS}).encode()), SETTINGS)
    assert frame.events == EVENTS


def test_ws_heartbeat_and_single_event():
    assert decode_ws_frame('{"type": "heartbeat", "timestamp": "t"}', SETTINGS).type == "heartbeat"
    frame = decode_ws_frame(json.dumps({"type": "event", **EVENTS[0]}), SETTINGS)
    assert frame.type == "event" and frame.events[0]["event_id"] == "edge-0"


@pytest.mark.parametrize("data, code", [
    ("{not json", "malformed_json"),
    ('["a"]', "invalid_message"),
    ('{"type": "subscribe"}', "unknown_type"),
    ('{"type": "batch", "events": "!!notbase64"}', "bad_compression"),
    ('{"type": "batch", "events": "aGVsbG8="}', "bad_compression"),
    ('{"type": "batch", "events": {"0": 31, "2": 139}}', "bad_compression"),
    ('{"type": "batch", "events": {"0": 300}}', "bad_compression"),
    ('{"type": "batch", "events": []}', "invalid_batch"),
    (json.dumps({"type": "batch", "events": EVENTS, "count": 3}), "count_mismatch"),
    (json.dumps({"type": "batch", "events": EVENTS * 2}), "batch_too_large"),
    (b"\x00\x01 not gzip", "bad_compression"),
])
def test_ws_bad_frames_have_codes(data, code):
    with pytest.raises(InvalidPayload) as info:
        decode_ws_frame(data, SETTINGS)
    assert info.value.code == code


@pytest.mark.parametrize("data, nul_free", [
    (json.dumps({"type": "event", **EVENTS[0]}), True),
    (json.dumps({"type": "event", **EVENTS[0], "title": "a\x00b"}), False),
    (json.dumps({"type": "batch", "events": [{**EVENTS[0], "tags": {"k": "\x00"}}]}), False),
    (json.dumps({"type": "batch", "events": base64.b64encode(gzip.compress(json.dumps(EVENTS).encode())).decode()}),
     True),
    (json.dumps({"type": "batch", "events": base64.b64encode(gzip.compress(
        json.dumps([{**EVENTS[0], "description": "\x00"}]).encode())).decode()}), False),
    (gzip.compress(json.dumps({"type": "batch", "events": [{**EVENTS[0], "title": "\x00"}]}).encode()), False),
])
def test_ws_frames_say_whether_their_text_can_hold_nul(data, nul_free):
    """The event validator skips its NUL walk only for frames whose JSON text has no \\u0000 escape."""
    assert decode_ws_frame(data, SETTINGS).nul_free is nul_free


def test_ws_gzip_bomb_is_refused():
    bomb = gzip.compress(b"[" + b" " * 10_000_000 + b"]")
    with pytest.raises(InvalidPayload) as info:
        decode_ws_frame(json.dumps({"type": "batch", "events": base64.b64encode(bomb).decode()}), SETTINGS)
    assert info.value.code == "message_too_large"
