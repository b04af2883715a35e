"""End to end through real workers: Sentinel event -> incident classified, enriched (catalog,
similar incidents, Prometheus metrics from a loopback server speaking its query API), correlated
and routed; related incidents and correlation groups over REST."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from werkzeug import Request, Response

from tests.conftest import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def fresh_enrichment_cache(test_env: dict[str, str]) -> None:
    """Enrichment answers cached in Redis by an earlier test must not leak into this one."""
    import redis

    client = redis.Redis.from_url(test_env["REDIS_URL"])
    for key in client.scan_iter("im:enrich:*"):
        client.delete(key)

SENTINEL = json.loads((Path(__file__).parent.parent / "fixtures" / "sentinel-event.json").read_text())

CATALOG = """
services:
  - name: ep-chat-completion
    description: Chat completion endpoint
    owner_team: llm-serving
    tier: tier-0
    dependencies: [vector-db, gpu-pool]
    runbook_url: https://runbooks.example.com/chat-completion
    escalation_policy: serving-critical
    metrics_queries:
      p95_latency_ms: 'histogram_quantile(0.95, sum(rate(request_latency_ms_bucket{service="{service}"}[5m])) by (le))'
      error_rate: 'sum(rate(requests_total{service="{service}",code=~"5.."}[5m]))'
  - name: vector-db
    owner_team: data-platform
    tier: tier-1
"""


def _processed(client: Any, key: str, incident_id: str) -> dict[str, Any] | None:
    body = client.get(f"/api/v1/incidents/{incident_id}", headers={"X-API-Key": key}).get_json()
    return body if body.get("processed_at") else None


@pytest.fixture
def prometheus(httpserver: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A loopback server answering Prometheus's instant-query API; records the queries it got."""
    received: list[str] = []

    def answer(request: Request) -> Response:
        query = request.args["query"]
        received.append(query)
        value = "5400" if "histogram_quantile" in query else "0.25"
        body = {"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"service": "ep-chat-completion"}, "value": [1731320000.0, value]}]}}
        return Response(json.dumps(body), content_type="application/json")

    httpserver.expect_request("/api/v1/query", method="GET").respond_with_handler(answer)
    monkeypatch.setenv("PROMETHEUS_URL", httpserver.url_for("/").rstrip("/"))
    httpserver.received_queries = received
    return httpserver


def test_sentinel_event_becomes_classified_enriched_correlated_incident(client, make_key, start_worker, prometheus):
    start_worker(queues="pipeline", concurrency=1)
    key = make_key("event:create", "incident:read", "incident:write")
    headers = {"X-API-Key": key}
    imported = client.post("/api/v1/services/import", data=CATALOG,
                           headers={**headers, "Content-Type": "application/yaml"})
    assert imported.status_code == 200, imported.get_json()
    assert imported.get_json() == {"created": ["ep-chat-completion", "vector-db"], "updated": []}

    # A past incident, resolved, that the new one should be found similar to.
    past = copy.deepcopy(SENTINEL)
    past.update(event_id="sent-past-1", title="Latency Spike Detected on chat completions",
                description="95th percentile latency exceeded threshold by 150%")
    past_id = client.post("/api/v1/events/sentinel", json=past, headers=headers).get_json()["incident_id"]
    wait_for(lambda: _processed(client, key, past_id), 30, message="the past incident to be processed")
    assert client.post(f"/api/v1/incidents/{past_id}/resolve", json={"resolved_by": "oncall", "root_cause": "pool"},
                       headers=headers).status_code == 200

    response = client.post("/api/v1/events/sentinel", json=SENTINEL, headers=headers)
    assert response.status_code == 202
    incident_id = response.get_json()["incident_id"]
    incident = wait_for(lambda: _processed(client, key, incident_id), 30, message="the incident to be processed")

    # Classification (rules classifier until a model is trained): high -> P1, the event's category.
    assert incident["predicted_severity"] == "P1" and incident["severity"] == "P1"
    assert incident["category"] == "performance" and incident["predicted_category"] == "performance"
    assert incident["confidence"] == pytest.approx(0.75) and incident["model_version"]

    enrichment = incident["enrichment"]
    assert enrichment["partial"] is False, enrichment["errors"]
    assert enrichment["service"] == {
        "name": "ep-chat-completion", "owner_team": "llm-serving", "tier": "tier-0",
        "dependencies": ["vector-db", "gpu-pool"], "runbook_url": "https://runbooks.example.com/chat-completion",
        "escalation_policy": "serving-critical"}
    assert enrichment["metrics"]["p95_latency_ms"]["value"] == 5400.0
    assert enrichment["metrics"]["error_rate"]["value"] == 0.25
    assert sorted(prometheus.received_queries) == sorted([
        'histogram_quantile(0.95, sum(rate(request_latency_ms_bucket{service="ep-chat-completion"}[5m])) by (le))',
        'sum(rate(requests_total{service="ep-chat-completion",code=~"5.."}[5m]))'])
    similar = enrichment["similar_incidents"]
    assert similar and similar[0]["incident_id"] == past_id and similar[0]["status"] == "RESOLVED"
    assert 0.5 <= similar[0]["score"] <= 1.0 and similar[0]["root_cause"] == "pool"
    assert enrichment["on_call"]["team"] == "llm-serving"

    # Routing: the catalog's owner team and policy (no rule, no default team configured).
    assert incident["team"] == "llm-serving" and incident["escalation_policy"] == "serving-critical"

    # Correlation: the past incident was resolved but is in the window, same source/type/service.
    assert incident["correlation_group_id"]
    related = client.get(f"/api/v1/incidents/{incident_id}/related", headers=headers).get_json()
    assert related["correlation_group"]["root_incident_id"] == past_id
    assert [r["id"] for r in related["related"]] == [past_id]
    strategies = {r["strategy"] for r in related["related"][0]["reasons"] or []}
    assert related["correlation_group"]["reasons"]
    assert {"source", "type", "similarity"} <= {r["strategy"] for r in related["correlation_group"]["reasons"]}
    assert strategies == {"root"}
    assert related["similar_incidents"][0]["incident_id"] == past_id

    groups = client.get("/api/v1/correlation-groups", headers=headers).get_json()
    assert len(groups["items"]) == 1 and groups["items"][0]["member_count"] == 2
    group = client.get(f"/api/v1/correlation-groups/{groups['items'][0]['id']}", headers=headers).get_json()
    assert {m["incident_id"] for m in group["members"]} == {past_id, incident_id}
    assert [m["root"] for m in group["members"] if m["incident_id"] == past_id] == [True]

    # One timeline row tells what the pipeline decided.
    timeline = client.get(f"/api/v1/incidents/{incident_id}/timeline", headers=headers).get_json()["items"]
    classified = [t for t in timeline if t["kind"] == "classified"]
    assert len(classified) == 1 and classified[0]["details"]["routing"]["reason"] == "service:ep-chat-completion"

    # The cache answers the second time: a repeat of the same text for another source id.
    again = copy.deepcopy(SENTINEL)
    again.update(event_id="sent-repeat", title="Latency Spike Detected (repeat)")
    second_id = client.post("/api/v1/events/sentinel", json=again, headers=headers).get_json()["incident_id"]
    second = wait_for(lambda: _processed(client, key, second_id), 30, message="the second incident")
    assert second["enrichment"]["metrics"]["p95_latency_ms"]["value"] == 5400.0
    assert len(prometheus.received_queries) == 2, "metrics answers are cached in Redis"
    assert second["correlation_group_id"] == incident["correlation_group_id"]

    # The web's /metrics includes what the worker counted (shared multiprocess directory).
    exposition = client.get("/metrics", headers=headers).get_data(as_text=True)
    values = {line.split(" ")[0]: float(line.split(" ")[-1]) for line in exposition.splitlines()
              if line and not line.startswith("#")}
    assert values["incident_manager_alerts_processed_total"] >= 3
    assert values["incident_manager_correlation_groups_created_total"] >= 1
    assert values["incident_manager_event_to_incident_latency_seconds_count"] >= 3
    assert values['incident_manager_processing_duration_seconds_count{stage="correlate"}'] >= 3
    assert values['incident_manager_enrichment_duration_seconds_count{enricher="metrics"}'] >= 2
    assert 0.0 < values["incident_manager_enrichment_cache_hit_rate"] <= 1.0
