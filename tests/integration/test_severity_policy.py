"""The severity policy (docs/ml.md, "Severity policy") through the real pipeline on a real worker,
with the trained model active: the guide's example events and an Alertmanager `critical` alert never
end below their source severity; `severity_reason` on REST, gRPC GetIncident and the timeline; a
`may_lower` integration is lowered by one level at most; the pipeline and `POST /api/v1/ml/classify`
agree for a source with its own mapping; a person's severity (create, PATCH, feedback) wins."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest

from app.domain.severity import SEVERITIES, map_source_severity
from tests.conftest import wait_for
from tests.integration.test_ml_api import served  # noqa: F401 - the fixture: the session's model, active

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent.parent / "fixtures"
SENTINEL = json.loads((FIXTURES / "sentinel-event.json").read_text())
# Guide §4: the Edge Agent's single event; §3: the Shield example (as a JSON event).
EDGE = {
    "event_id": "edge-2025-009876", "source": "llm-edge-agent", "timestamp": "2025-11-11T10:40:00Z",
    "event_type": "alert", "category": "availability", "title": "Rate Limit Exceeded",
    "description": "Tenant exceeded rate limit threshold", "severity": "medium",
    "resource": {"type": "tenant", "id": "tenant-456", "name": "Acme Corp"},
    "metrics": {"current_rpm": 12500, "limit_rpm": 10000, "throttled_requests": 2500},
    "tags": {"environment": "production", "edge_location": "edge-us-east-1-a"},
}
SHIELD = {
    "event_id": "shield-2025-005678", "source": "llm-shield", "source_version": "2.1.0",
    "timestamp": "2025-11-11T10:35:00Z", "event_type": "violation", "category": "security",
    "title": "Prompt Injection Detected", "description": "Malicious prompt injection attempt blocked",
    "severity": "critical",
    "resource": {"type": "model", "id": "model-gpt4-prod", "name": "GPT-4 Production",
                 "metadata": {"model_version": "gpt-4-0613", "deployment_id": "dep-12345"}},
    "metrics": {"confidence_score": 0.95, "attack_vectors": 3},
    "tags": {"environment": "production", "user_id": "user-789", "session_id": "sess-abc123"},
}
PAGERDUTY = {  # guide §6
    "event_action": "trigger", "dedup_key": "latency-chat-api",
    "payload": {"summary": "P1: Latency Spike Detected", "source": "llm-sentinel", "severity": "critical",
                "timestamp": "2025-11-11T10:30:00Z",
                "custom_details": {"incident_id": "INC-20251111-00042", "category": "performance",
                                   "resource": "/v1/chat/completions",
                                   "metrics": {"p95_latency_ms": 5400, "threshold_ms": 2000}}},
}
ALERTMANAGER = {
    "version": "4", "status": "firing", "receiver": "incident-manager", "groupKey": "{}:{alertname=\"GPUDown\"}",
    "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://alertmanager:9093",
    "alerts": [{
        "status": "firing", "startsAt": "2025-11-11T10:30:00Z", "fingerprint": "3f2a9c1d0b7e6a55",
        "labels": {"alertname": "InferenceNodeDown", "severity": "critical", "service": "chat-api",
                   "instance": "gpu-node-7:9100", "job": "node"},
        "annotations": {"summary": "Inference node gpu-node-7 is down",
                        "description": "gpu-node-7 has not answered scrapes for 5 minutes."},
    }],
}


def _rank(severity: str) -> int:
    return SEVERITIES.index(severity)


def _processed(client: Any, key: str, incident_id: str) -> dict[str, Any] | None:
    body = client.get(f"/api/v1/incidents/{incident_id}", headers={"X-API-Key": key}).get_json()
    return body if body.get("processed_at") else None


def _timeline_reason(client: Any, key: str, incident_id: str, kind: str) -> dict[str, Any]:
    entries = client.get(f"/api/v1/incidents/{incident_id}/timeline", headers={"X-API-Key": key}).get_json()
    items = entries["items"] if isinstance(entries, dict) else entries
    [entry] = [e for e in items if e["kind"] == kind][-1:]
    return entry["details"]["severity_reason"]


@pytest.fixture
def configured(test_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
               tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """configured(yaml): this process and workers started afterwards read that config.yaml."""
    from app.config import reset_settings_cache

    def write(text: str) -> None:
        config = tmp_path / "config.yaml"
        config.write_text(text)
        monkeypatch.setenv("CONFIG_FILE", str(config))
        reset_settings_cache()

    yield write
    monkeypatch.undo()
    reset_settings_cache()


def test_guide_examples_and_a_critical_alert_never_end_below_their_source(
        client: Any, make_key: Callable[..., str], served: str, start_worker: Callable[..., Any]) -> None:  # noqa: F811
    start_worker()
    key = make_key("event:create", "incident:read")
    headers = {"X-API-Key": key}
    opened: list[str] = []
    for event in (SENTINEL, EDGE, SHIELD):
        answer = client.post("/api/v1/events", json=event, headers=headers)
        assert answer.status_code in (200, 202), answer.get_json()
        opened.append(answer.get_json()["incident_id"])
    pd = client.post("/api/v1/integrations/pagerduty/enqueue", json={"routing_key": key, **PAGERDUTY})
    assert pd.status_code == 202, pd.get_json()
    opened.append(pd.get_json()["incident_id"])
    am = client.post("/api/v1/integrations/alertmanager", json=ALERTMANAGER, headers=headers)
    assert am.status_code in (200, 202), am.get_json()
    am_incident = wait_for(lambda: client.get("/api/v1/incidents?source=alertmanager", headers=headers)
                           .get_json()["items"], 30, message="the Alertmanager incident")
    opened.append(am_incident[0]["id"])

    expected_source = ["high", "medium", "critical", "critical", "critical"]
    for incident_id, source_severity in zip(opened, expected_source, strict=True):
        incident = wait_for(lambda i=incident_id: _processed(client, key, i), 60, message=f"{incident_id} processed")
        reason = incident["severity_reason"]
        assert incident["source_severity"] == source_severity
        floor = map_source_severity(source_severity)
        assert _rank(incident["severity"]) <= _rank(floor), (incident["title"], incident["severity"], reason)
        assert reason["decided_by"] in ("source", "model") and reason["mapped_source_severity"] == floor
        assert reason["model_version"] == served and reason["predicted_severity"] == incident["predicted_severity"]
        assert reason["decided_by"] == ("model" if incident["severity"] != floor else "source")
        assert _timeline_reason(client, key, incident_id, "classified") == reason


def test_severity_reason_on_grpc_get_incident(client: Any, make_key: Callable[..., str], served: str,  # noqa: F811
                                              start_worker: Callable[..., Any]) -> None:
    import proto
    from api.grpc.server import build_server

    start_worker()
    key = make_key("event:create", "incident:read", "incident:write")
    incident_id = client.post("/api/v1/events", json=SENTINEL, headers={"X-API-Key": key}).get_json()["incident_id"]
    incident = wait_for(lambda: _processed(client, key, incident_id), 60, message="processed")
    pb2, pb2_grpc = proto.load()
    server, port = build_server(address="127.0.0.1:0", stream_idle_secs=0.2)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb2_grpc.IncidentServiceStub(channel)
            metadata = (("x-api-key", key),)
            got = stub.GetIncident(pb2.GetIncidentRequest(incident_id=incident_id), metadata=metadata, timeout=10)
            reason = incident["severity_reason"]
            assert got.severity_reason.decided_by == reason["decided_by"]
            assert got.severity_reason.model_version == served
            assert got.severity_reason.mapped_source_severity == "P1"
            assert abs(got.severity_reason.confidence - reason["confidence"]) < 1e-9
            # A person's change over gRPC: reason manual, with who.
            changed = stub.UpdateIncident(pb2.UpdateIncidentRequest(incident_id=incident_id, severity="P4",
                                                                    actor="alice"), metadata=metadata, timeout=10)
            assert (changed.severity, changed.severity_reason.decided_by) == ("P4", "manual")
            assert changed.severity_reason.actor == "alice"
    finally:
        server.stop(grace=None).wait()


def _confident_drop(served_model: Any) -> tuple[dict[str, Any], str]:
    """A held-out event whose source said `critical` and the model, confidently, two or more levels less."""
    from ml.training import load_shipped

    _, held_out = load_shipped()
    candidates = [item for item in held_out.inputs if (item.source_severity or "").lower() == "critical"]
    predictions = served_model.predict_batch(candidates, record=False)
    for item, prediction in zip(candidates, predictions, strict=True):
        if prediction.confidence >= 0.8 and _rank(prediction.severity) >= 2:
            return ({"title": item.title, "description": item.description, "source": item.source,
                     "event_type": item.event_type, "category": item.category, "severity": item.source_severity,
                     "resource": {"type": item.resource_type} if item.resource_type else None,
                     "tags": dict(item.tags), "metrics": dict(item.metrics)}, prediction.severity)
    pytest.fail("the held-out set has no critical event the model confidently puts at P2 or below")


def test_may_lower_by_one_level_at_most_and_only_where_listed(
        client: Any, make_key: Callable[..., str], served: str, configured: Callable[[str], None]) -> None:  # noqa: F811
    from tests.unit.test_ml_model import base_model

    event, predicted = _confident_drop(base_model())
    event = {k: v for k, v in event.items() if v is not None}
    key = make_key("event:create")

    def classify() -> dict[str, Any]:
        answer = client.post("/api/v1/ml/classify", json=event, headers={"X-API-Key": key})
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()["predictions"][0]

    configured("ml:\n  may_lower: []\n")
    kept = classify()
    assert kept["predicted_severity"] == predicted
    assert (kept["severity"], kept["decided_by"]) == ("P0", "source")

    configured(f"ml:\n  may_lower: [{event['source']}]\n")
    lowered = classify()
    assert (lowered["severity"], lowered["decided_by"]) == ("P1", "model"), lowered
    assert lowered["severity_reason"]["predicted_severity"] == predicted  # it said lower; one level was allowed


def test_pipeline_and_classify_agree_for_a_source_with_its_own_mapping(
        client: Any, make_key: Callable[..., str], served: str, configured: Callable[[str], None],  # noqa: F811
        start_worker: Callable[..., Any]) -> None:
    configured("integrations:\n  custom-probe:\n    severity_mapping:\n      critical: P2\n      high: P3\n")
    start_worker()
    key = make_key("event:create", "incident:read")
    events = []
    for i, (severity, title) in enumerate([("critical", "Provider outage: all regions down for gpt-4o"),
                                           ("high", "Latency spike on chat-api (llama-3-70b)"),
                                           ("critical", "Minor model drift detected in staging")]):
        events.append({**copy.deepcopy(EDGE), "event_id": f"probe-{i}", "source": "custom-probe",
                       "severity": severity, "title": title})
    decided = client.post("/api/v1/ml/classify", json={"events": events}, headers={"X-API-Key": key}).get_json()
    for event, prediction in zip(events, decided["predictions"], strict=True):
        # The integration's own mapping, not the default one.
        assert prediction["mapped_source_severity"] == {"critical": "P2", "high": "P3"}[event["severity"]]
        incident_id = client.post("/api/v1/events", json=event, headers={"X-API-Key": key}).get_json()["incident_id"]
        incident = wait_for(lambda i=incident_id: _processed(client, key, i), 60, message="processed")
        assert incident["severity"] == prediction["severity"]
        assert incident["severity_reason"] == prediction["severity_reason"]


def test_a_persons_severity_wins(client: Any, make_key: Callable[..., str], served: str,  # noqa: F811
                                 start_worker: Callable[..., Any]) -> None:
    key = make_key("incident:write", "incident:read", "event:create")
    headers = {"X-API-Key": key}
    # Manual create: the person's P4 stands, even for a title the model reads as an outage.
    created = client.post("/api/v1/incidents", json={"title": "Provider outage: all regions down for gpt-4o",
                                                     "severity": "P4", "source": "manual"}, headers=headers)
    assert created.status_code == 201, created.get_json()
    manual_id = created.get_json()["id"]
    start_worker()
    incident = wait_for(lambda: _processed(client, key, manual_id), 60, message="processed")
    assert incident["severity"] == "P4" and incident["severity_reason"]["decided_by"] == "manual"
    assert _timeline_reason(client, key, manual_id, "classified")["decided_by"] == "manual"

    # PATCH, then feedback: each wins, each says who.
    sentinel_id = client.post("/api/v1/events", json=SENTINEL, headers=headers).get_json()["incident_id"]
    wait_for(lambda: _processed(client, key, sentinel_id), 60, message="processed")
    patched = client.patch(f"/api/v1/incidents/{sentinel_id}", json={"severity": "P3"},
                           headers=headers).get_json()
    assert patched["severity"] == "P3" and patched["severity_reason"]["decided_by"] == "manual"
    assert _timeline_reason(client, key, sentinel_id, "severity_changed")["decided_by"] == "manual"
    feedback = client.post(f"/api/v1/incidents/{sentinel_id}/feedback",
                           json={"severity": "P0", "category": "performance"}, headers=headers)
    assert feedback.status_code == 201
    after = client.get(f"/api/v1/incidents/{sentinel_id}", headers=headers).get_json()
    assert after["severity"] == "P0" and after["severity_reason"]["decided_by"] == "feedback"
    assert _timeline_reason(client, key, sentinel_id, "severity_changed")["decided_by"] == "feedback"
