"""The second held-out set: only the integration guide's own example events, as our doors turn them
into classifier inputs, each with the severity a person would give it and why (docs/ml.md, "The
guide's examples"). Six events: far too few for a stable macro-F1, but they are the shapes a
newcomer sends first, and no training row was written from them."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ml.interface import ClassifierInput


@dataclass(frozen=True)
class GuideExample:
    name: str
    item: ClassifierInput
    severity: str
    why: str


GUIDE_EXAMPLES: tuple[GuideExample, ...] = (
    GuideExample(
        "sentinel-latency-spike (guide 2)",
        ClassifierInput(
            title="Latency Spike Detected", description="95th percentile latency exceeded threshold by 270%",
            source="llm-sentinel", event_type="anomaly", category="performance", resource_type="endpoint",
            source_severity="high",
            tags={"environment": "production", "tenant_id": "tenant-123", "cluster": "prod-us-west-2-a"},
            metrics={"p95_latency_ms": 5400, "threshold_ms": 2000, "baseline_ms": 800, "duration_sec": 300,
                     "affected_requests": 1234}),
        "P1", "The guide renders this very incident as \"P1 Incident: Latency Spike Detected\" (Slack) and "
              "\"P1: Latency Spike Detected\" (PagerDuty); 2.7x its threshold for 5 minutes in production."),
    GuideExample(
        "shield-prompt-injection (guide 3, gRPC)",
        ClassifierInput(
            title="Prompt Injection Detected", description="Malicious prompt injection attempt blocked",
            source="llm-shield", event_type="violation", category="security", resource_type="model",
            source_severity="critical",
            tags={"environment": "production", "user_id": "user-789", "session_id": "sess-abc123"},
            metrics={"confidence_score": 0.95, "attack_vectors": 3}),
        "P0", "Shield sends only critical violations, and the guide's auto-remediation blocks the user "
              "for prompt injections at P0: the guide treats it as P0."),
    GuideExample(
        "edge-rate-limit (guide 4, WebSocket event)",
        ClassifierInput(
            title="Rate Limit Exceeded", description="Tenant exceeded rate limit threshold", source="llm-edge-agent",
            event_type="alert", category="availability", resource_type="tenant", source_severity="medium",
            tags={"environment": "production", "edge_location": "edge-us-east-1-a"},
            metrics={"current_rpm": 12500, "limit_rpm": 10000, "throttled_requests": 2500}),
        "P2", "One tenant 25 % over its limit, a fifth of its requests throttled: degraded service for one "
              "customer, not an outage; the sender says medium."),
    GuideExample(
        "edge-rate-limit (guide 4, SDK example)",
        ClassifierInput(
            title="Rate Limit Exceeded", description="Tenant exceeded rate limit threshold", source="llm-edge-agent",
            event_type="alert", category="availability", resource_type="tenant", source_severity="medium",
            metrics={"current_rpm": 12500, "limit_rpm": 10000}),
        "P2", "The same event without the throttled count."),
    GuideExample(
        "pagerduty-latency-spike (guide 6)",
        ClassifierInput(
            title="P1: Latency Spike Detected",
            description=json.dumps({"incident_id": "INC-20251111-00042", "category": "performance",
                                    "resource": "/v1/chat/completions",
                                    "metrics": {"p95_latency_ms": 5400, "threshold_ms": 2000}}, sort_keys=True),
            source="pagerduty", event_type="alert", category="performance", source_severity="critical",
            tags={"pagerduty_source": "llm-sentinel", "category": "performance"}),
        "P1", "The Sentinel incident above relayed through PagerDuty: its summary says P1; `critical` is "
              "PagerDuty's level for P0 and P1 alike in the guide's service routing."),
    GuideExample(
        "custom-sdk-alert (guide 8)",
        ClassifierInput(
            title="Custom Alert", description="Custom monitoring alert", source="custom-monitor", category="other",
            resource_type="service", source_severity="P2"),
        "P2", "Its sender chose P2 and the event says nothing else."),
)
