"""Generate the shipped training set `ml/data/incidents.csv`: labelled events in the shapes the
integrations really send (docs/ml.md, "The data set").

Deterministic (seeded): running it twice writes the same bytes. Nothing is downloaded.

How a row is made: a scenario (latency spike, rate limit, prompt injection, GPU OOM, ...) draws a
latent intensity in 0..1 and the integration that reports it. The intensity sets how far the
measured value is past the sender's own threshold or baseline (`p95_latency_ms` against
`threshold_ms` and `baseline_ms`, `current_rpm` against `limit_rpm`, ...); thresholds differ from
deployment to deployment, so only the ratio tells. The event then takes that sender's shape:

* Sentinel (guide §2): `anomaly` events with the guide's metric names, an endpoint resource, tags
  `environment`, `tenant_id`, `cluster`;
* Shield (§3): `violation`-like events, `confidence_score` and `attack_vectors` (and what was
  exposed, for leaks), always `category: security`;
* Edge Agent (§4): `alert` events about tenants, `current_rpm`/`limit_rpm`/`throttled_requests`,
  upstream error rates and latencies;
* Governance: compliance findings with counts;
* Alertmanager (CONTRACT: labels and annotations): `event_type: alert`, no metrics; the labels are
  the tags (`alertname`, `severity`, `service`, `instance`, `job`, `namespace`, sometimes
  `category`); the title is the `summary` annotation (or the bare alertname when there is none); the
  description is summary + description, with the numbers as text;
* PagerDuty Events v2: `event_type` the payload's `class` (or `alert`), the title its summary, the
  description its `custom_details` as JSON (with or without a `metrics` object), no metrics, tags
  `pagerduty_source`, `component`, `group`;
* manual incidents: a person's words, a P-level, no metrics.

No field that real senders lack (no impact score). The true severity follows from the intensity,
the scenario, the environment (staging is less severe) and qualifiers in the text ("confirmed",
"all regions", "blocked"). The source's own severity is a noisy report of it (each source misreports
10-30 % of the time), 2 % of labels and categories are moved (people disagree on borderline cases),
and a fixed 20 % of rows form the held-out split (`split` column).

    python -m ml.data.generate            # writes ml/data/incidents.csv
    python -m ml.data.generate --rows 8000 --out /tmp/x.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

SEED = 20261206
DEFAULT_ROWS = 10000
HELD_OUT_SHARE = 0.2
SEVERITY_NOISE = 0.02
CATEGORY_NOISE = 0.02
OUT = Path(__file__).resolve().parent / "incidents.csv"
COLUMNS = ["title", "description", "source", "event_type", "category", "resource_type", "source_severity",
           "tags", "metrics", "severity", "incident_category", "split"]
CATEGORIES = ("performance", "availability", "security", "cost", "quality", "infrastructure", "compliance")

MODELS = ["gpt-4", "gpt-4o", "claude-3-opus", "claude-3-sonnet", "llama-3-70b", "mistral-large", "gemini-1.5-pro",
          "text-embedding-3-large"]
REGIONS = ["us-west-2", "us-east-1", "eu-west-1", "eu-central-1", "ap-southeast-1"]
SERVICES = ["chat-api", "completion-gateway", "rag-retriever", "embedding-service", "agent-runtime", "support-bot"]
ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]
TENANTS = ["Acme Corp", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries"]
GPUS = ["a100-80g", "h100-sxm", "l40s"]

# source -> the severities it speaks, most severe first (index = level P0..P4)
VOCAB = {
    "llm-sentinel": ("critical", "high", "medium", "low", "info"),
    "llm-shield": ("critical", "high", "medium", "low", "info"),
    "llm-edge-agent": ("critical", "high", "medium", "low", "info"),
    "llm-governance-core": ("critical", "high", "medium", "low", "info"),
    # Alertmanager: the `severity` label its rules set (CONTRACT: the same mapping as the guide's).
    "alertmanager": ("critical", "high", "warning", "low", "info"),
    "pagerduty": ("critical", "error", "warning", "info", "info"),  # the Events API has four levels
    "manual": ("P0", "P1", "P2", "P3", "P4"),
}
# How often a source's severity is off the truth: detectors guess from one signal; alert rules and
# people judge with more context.
MISREPORT = {"llm-sentinel": 0.2, "llm-shield": 0.25, "llm-edge-agent": 0.25, "llm-governance-core": 0.2,
             "alertmanager": 0.1, "pagerduty": 0.12, "manual": 0.05}


def _j(rng: random.Random, value: float, spread: float = 0.05) -> float:
    """Measurement noise: a multiplicative jitter."""
    return value * math.exp(rng.gauss(0.0, spread))


def _r(value: float, digits: int = 0) -> float:
    return float(round(value, digits)) if digits else float(int(round(value)))


@dataclass(frozen=True)
class Measure:
    """What a detector measured: its metrics (the sender's names) and the facts the texts quote."""

    metrics: dict[str, float]
    facts: dict[str, Any]


# ------------------------------------------------------------------ measurements (z: intensity 0..1)

def _latency(rng: random.Random, z: float) -> Measure:
    threshold = rng.choice([500.0, 1000.0, 2000.0, 3000.0, 5000.0])
    ratio = _j(rng, 1.05 + 3.5 * z ** 1.2, 0.04)
    baseline = _r(threshold * rng.uniform(0.25, 0.6))
    value = _r(threshold * ratio)
    duration = _r(rng.choice([60, 120, 300, 600, 900]) * (0.5 + 2 * z))
    requests = _r(_j(rng, 50 + 20000 * z ** 1.5, 0.3))
    return Measure({"p95_latency_ms": value, "threshold_ms": threshold, "baseline_ms": baseline,
                    "duration_sec": duration, "affected_requests": requests},
                   {"value": value, "threshold": threshold, "pct": round(100 * (ratio - 1)),
                    "minutes": round(duration / 60)})


def _errors(rng: random.Random, z: float) -> Measure:
    threshold = rng.choice([0.01, 0.02, 0.05])
    ratio = _j(rng, 1.1 + 9 * z ** 1.4, 0.05)
    rate = round(min(1.0, threshold * ratio), 4)
    baseline = round(threshold * rng.uniform(0.05, 0.4), 4)
    requests = _r(_j(rng, 100 + 50000 * z ** 1.3, 0.3))
    return Measure({"error_rate": rate, "error_rate_threshold": threshold, "baseline_error_rate": baseline,
                    "duration_sec": _r(rng.choice([60, 300, 600]) * (0.5 + 2 * z)), "affected_requests": requests},
                   {"value": f"{100 * rate:.1f}%", "threshold": f"{100 * threshold:g}%",
                    "pct": round(100 * (ratio - 1)),
                    "minutes": rng.choice([5, 10, 15])})


def _outage(rng: random.Random, z: float) -> Measure:
    availability = round(max(0.0, _j(rng, 99.0 - 95 * z ** 1.1, 0.01)), 2)
    return Measure({"availability_pct": availability, "availability_target_pct": 99.9,
                    "error_rate": round(min(1.0, _j(rng, 0.05 + 0.9 * z ** 1.1, 0.05)), 4),
                    "failed_health_checks": _r(_j(rng, 2 + 40 * z, 0.1))},
                   {"value": f"{availability}%", "threshold": "99.9%", "pct": round(100 - availability),
                    "minutes": rng.choice([2, 5, 10, 30])})


def _rate_limit(rng: random.Random, z: float) -> Measure:
    limit = rng.choice([1000.0, 5000.0, 10000.0, 50000.0])
    ratio = _j(rng, 1.05 + 1.8 * z ** 1.2, 0.03)
    current = _r(limit * ratio)
    metrics = {"current_rpm": current, "limit_rpm": limit}
    if rng.random() < 0.7:
        metrics["throttled_requests"] = _r(current - limit)
    return Measure(metrics, {"value": current, "threshold": limit, "pct": round(100 * (ratio - 1)),
                             "minutes": rng.choice([1, 5, 10])})


def _quota(rng: random.Random, z: float) -> Measure:
    limit = rng.choice([1e6, 5e6, 2e7])
    ratio = _j(rng, 0.82 + 0.5 * z, 0.03)
    used = _r(limit * ratio)
    return Measure({"tokens_used": used, "tokens_limit": limit}, {"value": used, "threshold": limit,
                                                                 "pct": round(100 * ratio), "minutes": 60})


def _throughput(rng: random.Random, z: float) -> Measure:
    baseline = rng.choice([200.0, 800.0, 3000.0])
    current = _r(baseline * max(0.02, _j(rng, 0.85 - 0.8 * z, 0.08)), 1)
    return Measure({"current_rps": current, "baseline_rps": baseline, "duration_sec": _r(300 * (0.5 + 2 * z))},
                   {"value": current, "threshold": baseline, "pct": round(100 * (1 - current / baseline)),
                    "minutes": rng.choice([5, 10, 30])})


def _cost(rng: random.Random, z: float) -> Measure:
    baseline = rng.choice([50.0, 200.0, 1000.0])
    ratio = _j(rng, 1.3 + 8 * z ** 1.3, 0.08)
    return Measure({"hourly_cost_usd": _r(baseline * ratio, 2), "baseline_cost_usd": baseline},
                   {"value": f"${baseline * ratio:,.0f}", "threshold": f"${baseline:,.0f}",
                    "pct": round(100 * (ratio - 1)),
                    "minutes": 60})


def _gpu(rng: random.Random, z: float) -> Measure:
    used = round(min(100.0, _j(rng, 90 + 10 * z, 0.01)), 1)
    return Measure({"gpu_memory_used_pct": used, "threshold_pct": 90.0,
                    "oom_kills": _r(_j(rng, 1 + 40 * z ** 1.6, 0.2))},
                   {"value": f"{used}%", "threshold": "90%", "pct": round(used), "minutes": rng.choice([5, 15])})


def _drift(rng: random.Random, z: float) -> Measure:
    threshold = rng.choice([0.1, 0.2, 0.3])
    score = round(threshold * _j(rng, 1.05 + 3 * z, 0.06), 3)
    return Measure({"drift_score": score, "drift_score_threshold": threshold},
                   {"value": score, "threshold": threshold, "pct": round(100 * (score / threshold - 1)), "minutes": 60})


def _hallucination(rng: random.Random, z: float) -> Measure:
    baseline = rng.choice([0.02, 0.04])
    rate = round(min(1.0, baseline * _j(rng, 1.5 + 10 * z, 0.08)), 4)
    return Measure({"hallucination_rate": rate, "baseline_hallucination_rate": baseline},
                   {"value": f"{100 * rate:.1f}%", "threshold": f"{100 * baseline:g}%",
                    "pct": round(100 * (rate / baseline - 1)), "minutes": 60})


def _injection(rng: random.Random, z: float) -> Measure:
    return Measure({"confidence_score": round(min(0.999, _j(rng, 0.6 + 0.39 * z, 0.015)), 3),
                    "attack_vectors": _r(_j(rng, 1 + 9 * z, 0.1))},
                   {"value": "", "threshold": "", "pct": 0, "minutes": 0})


def _leak(rng: random.Random, z: float) -> Measure:
    return Measure({"confidence_score": round(min(0.999, _j(rng, 0.6 + 0.39 * z, 0.015)), 3),
                    "records_exposed": _r(_j(rng, 1 + 20000 * z ** 3, 0.3)),
                    "pii_matches": _r(_j(rng, 1 + 300 * z ** 2, 0.3))},
                   {"value": "", "threshold": "", "pct": 0, "minutes": 0})


def _compliance(rng: random.Random, z: float) -> Measure:
    return Measure({"violations": _r(_j(rng, 1 + 150 * z ** 2, 0.2)),
                    "records_affected": _r(_j(rng, 1 + 80000 * z ** 3, 0.3))},
                   {"value": "", "threshold": "", "pct": 0, "minutes": 0})


# ------------------------------------------------------------------ scenarios

@dataclass(frozen=True)
class Scenario:
    name: str
    category: str
    base: float  # severity points at intensity 0 (0 = P4 .. 3.3+ = P0)
    span: float  # points added at intensity 1
    measure: Callable[[random.Random, float], Measure]
    sources: tuple[tuple[str, float], ...]  # (source, weight)
    detector_titles: tuple[str, ...]  # Sentinel / Edge Agent / Shield / Governance titles
    detector_descriptions: tuple[str, ...]
    event_type: str  # what the detector calls it (Sentinel: anomaly; Edge: alert; Shield: its own kinds)
    alertname: str
    summaries: tuple[str, ...]  # Alertmanager summary / PagerDuty summary / a person's title
    words: tuple[tuple[str, float], ...] = (("", 0.0),)  # qualifiers and the severity points they add
    resource: str = "endpoint"


S, E, SH, G, AM, PD, M = ("llm-sentinel", "llm-edge-agent", "llm-shield", "llm-governance-core", "alertmanager",
                          "pagerduty", "manual")
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("latency", "performance", 0.5, 3.4, _latency, ((S, 4), (E, 1), (AM, 2), (PD, 1.5), (M, 0.4)),
             ("Latency Spike Detected", "Latency Anomaly on {endpoint}", "p95 Latency Above Threshold"),
             ("95th percentile latency exceeded threshold by {pct}%",
              "p95 latency for {model} in {region} at {value}ms against a {threshold}ms threshold",
              "Latency of {endpoint} {qualifier} above threshold for {minutes} minutes"),
             "anomaly", "HighP95Latency",
             ("p95 latency of {service} above {threshold}ms", "Latency spike on {service} ({model})",
              "Slow responses from {model} in {region}"),
             (("briefly", -0.4), ("sustained", 0.4), ("", 0.0), ("", 0.0))),
    Scenario("error_rate", "availability", 0.9, 3.3, _errors, ((S, 3), (E, 1), (AM, 2), (PD, 1.5), (M, 0.4)),
             ("Error Rate Anomaly Detected", "Elevated Error Rate on {endpoint}", "Error Rate Above Threshold"),
             ("Error rate {value} exceeded the {threshold} threshold by {pct}%",
              "Upstream {model} calls failing in {region}: error rate {value}",
              "{qualifier} 5xx errors from {endpoint}"),
             "anomaly", "HighErrorRate",
             ("Error rate above {threshold} on {service}", "5xx errors from {model} for {service}",
              "{service} returning errors in {region}"),
             (("intermittent", -0.5), ("persistent", 0.5), ("", 0.0), ("", 0.0))),
    Scenario("rate_limit", "availability", 0.6, 2.6, _rate_limit, ((E, 4), (AM, 1), (PD, 0.8), (M, 0.3)),
             ("Rate Limit Exceeded", "Tenant Rate Limit Exceeded", "Request Rate Above Limit"),
             ("Tenant exceeded rate limit threshold", "{tenant} at {value} rpm against a limit of {threshold}",
              "Rate limit {qualifier} exceeded by {pct}% for {tenant}"),
             "alert", "TenantRateLimited",
             ("Tenant {tenant} rate limited", "Requests throttled for {tenant} on {service}"),
             (("briefly", -0.4), ("repeatedly", 0.4), ("", 0.0), ("", 0.0)), "tenant"),
    Scenario("token_quota", "cost", 0.3, 2.8, _quota, ((E, 2), (S, 1), (PD, 0.5), (M, 0.3)),
             ("Token Quota Nearly Exhausted", "Token Quota Exceeded", "Token Usage Above Quota"),
             ("Tokens used {pct}% of the monthly quota for {tenant}",
              "{tenant} token usage {qualifier} at {pct}% of quota on {model}"),
             "alert", "TokenQuotaHigh",
             ("Token quota at {pct}% for {tenant}", "{tenant} close to its token quota"),
             (("approaching", -0.5), ("exceeded", 0.5), ("", 0.0)), "tenant"),
    Scenario("throughput", "performance", 0.4, 3.0, _throughput, ((S, 3), (AM, 1.5), (PD, 0.5), (M, 0.3)),
             ("Throughput Drop Detected", "Request Throughput Anomaly"),
             ("Throughput of {endpoint} down {pct}% from baseline",
              "{model} serving {qualifier} below baseline in {region}"),
             "anomaly", "ThroughputDrop",
             ("Throughput on {service} down {pct}%", "Request rate collapse on {service}"),
             (("slowly", -0.4), ("sharply", 0.5), ("", 0.0))),
    Scenario("cost", "cost", 0.0, 2.9, _cost, ((S, 3), (G, 1), (PD, 0.5), (M, 0.3)),
             ("Cost Anomaly Detected", "Spend Above Baseline", "Token Spend Anomaly"),
             ("Hourly spend {value} against a baseline of {threshold}", "Spend on {model} {qualifier} above baseline"),
             "anomaly", "CostAnomaly",
             ("Spend on {model} {pct}% above baseline", "Unexpected spend for {tenant}"),
             (("slightly", -0.5), ("far", 0.5), ("", 0.0)), "tenant"),
    Scenario("gpu", "infrastructure", 0.7, 3.0, _gpu, ((AM, 4), (S, 1), (PD, 1), (M, 0.3)),
             ("GPU Memory Exhaustion Detected", "GPU Out Of Memory"),
             ("GPU memory at {value} on {gpu} nodes serving {model}", "CUDA OOM {qualifier} in {model} workers"),
             "anomaly", "GPUMemoryExhausted",
             ("GPU memory exhausted on {gpu} nodes", "Inference pods OOMKilled on {gpu} ({model})",
              "CUDA out of memory serving {model}"),
             (("single node", -0.5), ("cluster-wide", 0.6), ("", 0.0)), "gpu_node"),
    Scenario("outage", "availability", 1.8, 2.6, _outage, ((S, 2), (E, 1), (AM, 2), (PD, 2), (M, 0.5)),
             ("Provider Outage Detected", "Endpoint Unavailable", "Upstream Provider Down"),
             ("{model} not answering in {region}: availability {value}", "Every call to {model} fails {qualifier}"),
             "anomaly", "EndpointDown",
             ("{service} is down in {region}", "{model} provider outage", "Inference endpoint unreachable"),
             (("partial", -0.6), ("all regions", 0.7), ("", 0.0))),
    Scenario("drift", "quality", 0.0, 2.8, _drift, ((S, 3), (G, 0.5), (M, 0.4)),
             ("Model Drift Detected", "Embedding Drift Detected"),
             ("Drift score {value} above the {threshold} threshold for {model}", "Input drift on {model} {qualifier}"),
             "anomaly", "ModelDrift",
             ("Drift on {model}", "Accuracy regression after {model} update"),
             (("minor", -0.5), ("severe", 0.6), ("", 0.0)), "model"),
    Scenario("hallucination", "quality", 0.3, 2.8, _hallucination, ((S, 2), (SH, 1), (M, 0.5)),
             ("Hallucination Rate Elevated", "Groundedness Drop Detected"),
             ("Hallucination rate {value} against a baseline of {threshold}",
              "{qualifier} ungrounded answers from {model}"),
             "anomaly", "HallucinationRateHigh",
             ("Ungrounded answers from {model}", "{service} citing non-existent sources"),
             (("occasional", -0.5), ("widespread", 0.6), ("", 0.0)), "model"),
    Scenario("prompt_injection", "security", 1.4, 2.8, _injection, ((SH, 5), (PD, 0.5), (M, 0.4)),
             ("Prompt Injection Detected", "Jailbreak Attempt Detected", "Malicious Prompt Pattern"),
             ("Malicious prompt injection attempt {qualifier}",
              "Instructions overriding the system prompt of {service} {qualifier}"),
             "prompt_injection", "PromptInjection",
             ("Prompt injection against {service}", "Jailbreak attempts on {model}"),
             (("blocked", -0.6), ("not blocked", 0.8), ("suspected", -0.4), ("confirmed", 0.5)), "model"),
    Scenario("data_leakage", "security", 1.8, 2.6, _leak, ((SH, 4), (G, 1), (PD, 0.5), (M, 0.4)),
             ("Data Leakage Detected", "PII Exposure in Response", "Sensitive Data Returned"),
             ("Responses of {service} contain customer PII {qualifier}",
              "{qualifier} cross-tenant data exposure via {model}"),
             "data_leakage", "DataLeakage",
             ("PII exposure in {service} responses", "Cross-tenant data leak on {service}"),
             (("suspected", -0.7), ("confirmed", 0.7), ("", 0.0)), "model"),
    Scenario("policy_violation", "security", 0.6, 2.8, _injection, ((SH, 4), (M, 0.3)),
             ("Policy Violation Detected", "Content Policy Violation", "Privilege Escalation Attempt"),
             ("Request from {tenant} violated a content policy {qualifier}",
              "Privilege escalation attempt against {service} {qualifier}"),
             "policy_violation", "PolicyViolation",
             ("Policy violations from {tenant}", "Privilege escalation attempt on {service}"),
             (("blocked", -0.5), ("not blocked", 0.7), ("", 0.0)), "model"),
    Scenario("compliance", "compliance", 0.4, 3.0, _compliance, ((G, 4), (M, 0.6)),
             ("Compliance Violation Detected", "Retention Policy Breach", "Audit Finding"),
             ("Prompt logs of {service} kept beyond retention {qualifier}",
              "User data sent to {model} without a processing agreement {qualifier}"),
             "compliance_violation", "ComplianceViolation",
             ("GDPR retention breach on {service}", "Audit finding on {service}"),
             (("potential", -0.6), ("confirmed", 0.6), ("", 0.0)), "dataset"),
)

ENVIRONMENTS = (("production", 0.0, 0.8), ("staging", -1.5, 0.2))


def _level(points: float) -> int:
    """Severity points -> level index (0 = P0 .. 4 = P4)."""
    for level, floor in enumerate((3.3, 2.5, 1.6, 0.8)):
        if points >= floor:
            return level
    return 4


def _weighted(rng: random.Random, options: tuple[tuple[str, float], ...]) -> str:
    total = sum(w for _, w in options)
    roll, acc = rng.random() * total, 0.0
    for name, weight in options:
        acc += weight
        if roll <= acc:
            return name
    return options[-1][0]


def _report(rng: random.Random, source: str, level: int) -> str:
    """The source's own severity: the truth, misreported by a level (sometimes more) now and then."""
    reported = level
    if rng.random() < MISREPORT[source]:
        reported = min(4, max(0, level + rng.choice((-1, 1))))
        if rng.random() < 0.15:
            reported = rng.randrange(5)
    return VOCAB[source][reported]


def _fill(template: str, slots: dict[str, Any]) -> str:
    return " ".join(template.format(**slots).split())


def make_row(rng: random.Random) -> dict[str, str]:
    scenario = rng.choice(SCENARIOS)
    source = _weighted(rng, scenario.sources)
    z = rng.betavariate(1.3, 1.6)
    roll, environment, env_points = rng.random(), "production", 0.0
    if roll < ENVIRONMENTS[1][2]:
        environment, env_points = "staging", ENVIRONMENTS[1][1]
    qualifier, qualifier_points = rng.choice(scenario.words)
    measure = scenario.measure(rng, z)
    slots = {"model": rng.choice(MODELS), "region": rng.choice(REGIONS), "service": rng.choice(SERVICES),
             "endpoint": rng.choice(ENDPOINTS), "tenant": rng.choice(TENANTS), "gpu": rng.choice(GPUS),
             "qualifier": qualifier, **measure.facts}
    level = _level(scenario.base + scenario.span * z + env_points + qualifier_points)
    if rng.random() < SEVERITY_NOISE:
        level = min(4, max(0, level + rng.choice((-1, 1))))
    category = scenario.category
    if rng.random() < CATEGORY_NOISE:
        category = rng.choice([c for c in CATEGORIES if c != category])
    severity = _report(rng, source, level)
    summary = _fill(rng.choice(scenario.summaries), slots)
    tags: dict[str, Any]
    metrics: dict[str, float] = {}
    event_category = ""
    resource_type = ""
    if source in (S, E, SH, G):
        title = _fill(rng.choice(scenario.detector_titles), slots)
        description = _fill(rng.choice(scenario.detector_descriptions), slots)
        if qualifier and qualifier not in description:
            description = f"{description} ({qualifier})"
        metrics = dict(measure.metrics)
        event_type = {S: "anomaly", E: "alert", G: "compliance_violation"}.get(source, scenario.event_type)
        if source == S and scenario.event_type != "anomaly":
            event_type = scenario.event_type
        event_category = scenario.category if rng.random() < 0.85 else ""
        resource_type = scenario.resource if rng.random() < 0.9 else ""
        tags = {"environment": environment}
        if source == S:
            tags.update({"tenant_id": f"tenant-{rng.randrange(100, 999)}", "cluster": f"prod-{slots['region']}-a"})
        elif source == E:
            tags["edge_location"] = f"edge-{slots['region']}-a"
        elif source == SH:
            tags.update({"user_id": f"user-{rng.randrange(100, 999)}", "session_id": f"sess-{rng.randrange(10**5)}"})
    elif source == AM:
        alertname = scenario.alertname
        has_summary = rng.random() < 0.75
        title = summary if has_summary else alertname
        detail = _fill(rng.choice(scenario.detector_descriptions), slots)
        if qualifier and qualifier not in detail:
            detail = f"{detail} ({qualifier})"
        description = "\n\n".join(p for p in ((summary if has_summary else ""), detail) if p)
        event_type = "alert"
        tags = {"alertname": alertname, "severity": severity, "service": slots["service"],
                "instance": f"{slots['service']}-{rng.randrange(10)}:9090", "job": slots["service"],
                "namespace": rng.choice(["inference", "serving", "platform"]), "environment": environment}
        if rng.random() < 0.3:
            tags["category"] = scenario.category
            event_category = scenario.category
        resource_type = "instance"
    elif source == PD:
        title = summary
        if rng.random() < 0.2:  # relayed by another incident manager, whose own level heads the summary
            relayed = min(4, max(0, level + (rng.choice((-1, 1)) if rng.random() < 0.25 else 0)))
            title = f"P{relayed}: {_fill(rng.choice(scenario.detector_titles), slots)}"
        details: dict[str, Any] = {"category": scenario.category, "service": slots["service"],
                                   "environment": environment}
        if measure.metrics and rng.random() < 0.5:
            details["metrics"] = {k: v for k, v in list(measure.metrics.items())[:2]}
        if rng.random() < 0.5:
            details["resource"] = slots["endpoint"]
        description = json.dumps(details, sort_keys=True)
        event_type = rng.choice(["alert", "alert", scenario.name])
        tags = {"pagerduty_source": rng.choice(["llm-sentinel", "datadog", "grafana", slots["service"]]),
                "category": scenario.category, "service": slots["service"], "environment": environment}
        if rng.random() < 0.5:
            tags["component"] = slots["service"]
        event_category = scenario.category
    else:  # manual
        title = summary
        description = _fill(rng.choice(scenario.detector_descriptions), slots)
        if qualifier and qualifier not in description:
            description = f"{description}. Reported as {qualifier}."
        event_type = rng.choice(["manual", "manual", scenario.name])
        tags = {"environment": environment} if rng.random() < 0.6 else {}
        event_category = scenario.category if rng.random() < 0.7 else ""
    return {
        "title": title,
        "description": description,
        "source": source,
        "event_type": event_type,
        "category": event_category,
        "resource_type": resource_type,
        "source_severity": severity,
        "tags": json.dumps(tags, sort_keys=True),
        "metrics": json.dumps(metrics, sort_keys=True),
        "severity": f"P{level}",
        "incident_category": category,
        "split": "test" if rng.random() < HELD_OUT_SHARE else "train",
    }


def generate(rows: int = DEFAULT_ROWS, seed: int = SEED) -> list[dict[str, str]]:
    """The data set as a list of CSV rows (deterministic for a given seed)."""
    rng = random.Random(seed)
    return [make_row(rng) for _ in range(rows)]


def write(path: Path = OUT, rows: int = DEFAULT_ROWS, seed: int = SEED) -> int:
    """Write the CSV; returns the number of rows written."""
    data = generate(rows, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(data)
    return len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    count = write(args.out, args.rows, args.seed)
    print(f"wrote {count} rows to {args.out}")  # noqa: T201 - a command-line script's output


if __name__ == "__main__":
    main()
