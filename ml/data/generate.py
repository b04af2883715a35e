"""Generate the shipped training set `ml/data/incidents.csv`: labelled LLM-infrastructure incidents.

Deterministic (seeded): running it twice writes the same bytes. Nothing is downloaded.

How a row is made: a scenario (GPU OOM, provider outage, prompt injection, ...) draws a latent
intensity in 0..1; the metrics the source would send are derived from it with measurement noise;
the true severity follows from the intensity, the scenario's base severity, the environment and
service tier tags, and a few words in the text ("confirmed" vs "suspected", "PII", "all regions").
The source's own severity is a noisy, source-specific report of the truth (sources are
miscalibrated), and a share of the labels is deliberately disturbed (people disagree on
borderline incidents), so a model has to earn its score. A fixed 20 % of rows, chosen by the
generator, form the held-out split (`split` column) that every model version is scored on.

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
from typing import Callable

SEED = 20261123
DEFAULT_ROWS = 10000
HELD_OUT_SHARE = 0.2
SEVERITY_NOISE = 0.02  # share of labels moved one level (borderline human judgement)
CATEGORY_NOISE = 0.02
OUT = Path(__file__).resolve().parent / "incidents.csv"
COLUMNS = ["title", "description", "source", "event_type", "category", "resource_type", "source_severity",
           "tags", "metrics", "severity", "incident_category", "split"]
CATEGORIES = ("performance", "availability", "security", "cost", "quality", "infrastructure", "compliance")

MODELS = ["gpt-4o", "gpt-4-turbo", "claude-3-opus", "claude-3-sonnet", "llama-3-70b", "llama-3-8b", "mistral-large",
          "mixtral-8x7b", "gemini-1.5-pro", "text-embedding-3-large", "bge-reranker", "whisper-large"]
PROVIDERS = ["openai", "anthropic", "azure-openai", "bedrock", "vertex-ai", "together", "self-hosted"]
REGIONS = ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-1", "ap-northeast-1"]
SERVICES = ["chat-api", "completion-gateway", "rag-retriever", "embedding-service", "agent-runtime",
            "summarizer", "support-bot", "code-assistant", "search-ranker", "moderation-service"]
TENANTS = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka"]
GPUS = ["a100-80g", "h100-sxm", "l40s", "a10g"]

SOURCE_VOCAB = {
    # source -> the severities it speaks (index 0 = most severe .. 4 = least)
    "sentinel": ["critical", "high", "medium", "low", "info"],
    "shield": ["critical", "high", "medium", "low", "info"],
    "edge-agent": ["critical", "high", "medium", "low", "info"],
    "governance": ["critical", "high", "medium", "low", "info"],
    "alertmanager": ["critical", "critical", "warning", "warning", "info"],
    "pagerduty": ["critical", "error", "warning", "warning", "info"],
    "manual": ["P0", "P1", "P2", "P3", "P4"],
}
# How a source misreports: probability that the reported level is shifted, and the bias direction.
DETECTORS = ("sentinel", "shield", "edge-agent")
SOURCE_SKEW = {"sentinel": (0.30, 0), "shield": (0.35, -1), "edge-agent": (0.40, 0), "governance": (0.30, -1),
               "alertmanager": (0.25, 0), "pagerduty": (0.30, 1), "manual": (0.15, 0)}


@dataclass(frozen=True)
class Scenario:
    name: str
    category: str
    event_types: tuple[str, ...]
    sources: tuple[str, ...]
    resource_type: str
    base: float  # severity points at intensity 0 (0 = P4 .. 4+ = P0)
    span: float  # points added at intensity 1
    titles: tuple[str, ...]
    descriptions: tuple[str, ...]
    metrics: Callable[[random.Random, float], dict[str, float]]
    words: tuple[tuple[str, float], ...] = ()  # ({qualifier} text, severity points it adds)


def _j(rng: random.Random, value: float, spread: float = 0.05) -> float:
    """Measurement noise: a multiplicative jitter."""
    return value * math.exp(rng.gauss(0.0, spread))


def _latency(rng: random.Random, z: float) -> dict[str, float]:
    base = rng.choice([350.0, 600.0, 900.0, 1500.0])
    return {"latency_p99_ms": round(_j(rng, base * (1.3 + 9 * z ** 1.3)), 1),
            "latency_p50_ms": round(_j(rng, base * 0.4 * (1 + 3 * z)), 1),
            "baseline_p99_ms": base, "requests_per_second": round(_j(rng, rng.uniform(20, 900)), 1),
            "affected_requests_pct": round(min(100.0, _j(rng, 2 + 90 * z, 0.12)), 2)}


def _errors(rng: random.Random, z: float) -> dict[str, float]:
    return {"error_rate": round(min(1.0, _j(rng, 0.015 + 0.6 * z ** 1.4)), 4),
            "requests_per_second": round(_j(rng, rng.uniform(30, 1200)), 1),
            "status_5xx_count": float(int(_j(rng, 20 + 20000 * z ** 1.4, 0.15))),
            "window_seconds": float(rng.choice([60, 300]))}


def _quota(rng: random.Random, z: float) -> dict[str, float]:
    return {"quota_used_pct": round(min(100.0, _j(rng, 78 + 22 * z, 0.02)), 2),
            "rejected_requests": float(int(_j(rng, 5 + 40000 * z ** 2, 0.2))),
            "tokens_per_minute": float(int(_j(rng, rng.uniform(2e5, 2e6)))),
            "affected_requests_pct": round(min(100.0, _j(rng, 0.5 + 70 * z ** 1.5, 0.12)), 2)}


def _injection(rng: random.Random, z: float) -> dict[str, float]:
    return {"attack_score": round(min(1.0, _j(rng, 0.55 + 0.45 * z, 0.04)), 3),
            "blocked_attempts": float(int(_j(rng, 3 + 400 * z ** 2, 0.2))),
            "successful_bypasses": float(int(max(0.0, _j(rng, 12 * z ** 3, 0.3) - 0.5))),
            "distinct_users": float(int(_j(rng, 1 + 40 * z ** 2, 0.2)))}


def _leak(rng: random.Random, z: float) -> dict[str, float]:
    return {"records_exposed": float(int(_j(rng, 1 + 50000 * z ** 3, 0.25))),
            "pii_matches": float(int(_j(rng, 0.5 + 300 * z ** 2, 0.25))),
            "detection_confidence": round(min(1.0, _j(rng, 0.6 + 0.4 * z, 0.04)), 3)}


def _gpu(rng: random.Random, z: float) -> dict[str, float]:
    return {"gpu_memory_used_pct": round(min(100.0, _j(rng, 88 + 12 * z, 0.015)), 2),
            "oom_kills": float(int(_j(rng, 1 + 60 * z ** 1.6, 0.2))),
            "pods_restarting": float(int(_j(rng, 1 + 30 * z ** 1.5, 0.2))),
            "capacity_lost_pct": round(min(100.0, _j(rng, 3 + 80 * z, 0.1)), 2)}


def _drift(rng: random.Random, z: float) -> dict[str, float]:
    return {"drift_score": round(_j(rng, 0.1 + 0.8 * z, 0.07), 3),
            "accuracy_drop_pct": round(_j(rng, 1 + 30 * z ** 1.3, 0.1), 2),
            "eval_samples": float(int(rng.uniform(500, 20000)))}


def _hallucination(rng: random.Random, z: float) -> dict[str, float]:
    return {"hallucination_rate": round(min(1.0, _j(rng, 0.03 + 0.45 * z, 0.08)), 4),
            "groundedness_score": round(max(0.0, min(1.0, _j(rng, 0.95 - 0.6 * z, 0.04))), 3),
            "user_reports": float(int(_j(rng, 1 + 150 * z ** 2, 0.25)))}


def _outage(rng: random.Random, z: float) -> dict[str, float]:
    return {"availability_pct": round(max(0.0, _j(rng, 100 - 100 * z ** 1.2 - 0.5, 0.01)), 3),
            "error_rate": round(min(1.0, _j(rng, 0.05 + 0.95 * z ** 1.2)), 4),
            "failed_health_checks": float(int(_j(rng, 2 + 50 * z, 0.15))),
            "minutes_down": round(_j(rng, 1 + 45 * z, 0.15), 1)}


def _cost(rng: random.Random, z: float) -> dict[str, float]:
    budget = rng.choice([500.0, 2000.0, 10000.0, 50000.0])
    return {"daily_budget_usd": budget, "spend_usd": round(_j(rng, budget * (1.1 + 4 * z ** 1.3)), 2),
            "spend_vs_baseline_ratio": round(_j(rng, 1.2 + 6 * z ** 1.3, 0.08), 3),
            "tokens_consumed": float(int(_j(rng, 1e6 + 5e8 * z, 0.15)))}


def _throughput(rng: random.Random, z: float) -> dict[str, float]:
    return {"queue_depth": float(int(_j(rng, 50 + 20000 * z ** 1.5, 0.15))),
            "tokens_per_second": round(_j(rng, 4000 * (1 - 0.85 * z) + 100, 0.08), 1),
            "gpu_utilization_pct": round(min(100.0, _j(rng, 70 + 30 * z, 0.03)), 2),
            "affected_requests_pct": round(min(100.0, _j(rng, 1 + 80 * z, 0.12)), 2)}


def _vector(rng: random.Random, z: float) -> dict[str, float]:
    return {"recall_at_10": round(max(0.0, _j(rng, 0.95 - 0.7 * z, 0.04)), 3),
            "index_lag_seconds": round(_j(rng, 5 + 3600 * z ** 2, 0.15), 1),
            "query_errors": float(int(_j(rng, 1 + 5000 * z ** 2, 0.2)))}


def _compliance(rng: random.Random, z: float) -> dict[str, float]:
    return {"violations": float(int(_j(rng, 1 + 200 * z ** 2, 0.2))),
            "records_affected": float(int(_j(rng, 1 + 100000 * z ** 3, 0.3))),
            "days_overdue": round(_j(rng, 1 + 30 * z, 0.1), 1)}


def _keys(rng: random.Random, z: float) -> dict[str, float]:
    return {"requests_from_unknown_ips": float(int(_j(rng, 5 + 50000 * z ** 2, 0.2))),
            "distinct_ips": float(int(_j(rng, 1 + 400 * z ** 2, 0.2))),
            "spend_usd": round(_j(rng, 10 + 20000 * z ** 2, 0.2), 2)}


def _toxicity(rng: random.Random, z: float) -> dict[str, float]:
    return {"toxicity_rate": round(min(1.0, _j(rng, 0.01 + 0.25 * z, 0.08)), 4),
            "flagged_responses": float(int(_j(rng, 3 + 3000 * z ** 2, 0.2))),
            "user_reports": float(int(_j(rng, 1 + 80 * z ** 2, 0.25)))}


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("latency_spike", "performance", ("latency_spike", "anomaly", "slo_burn"),
             ("sentinel", "alertmanager", "edge-agent"), "endpoint", 0.6, 3.2,
             ("Latency spike on {service} ({model})", "p99 latency {qualifier} above SLO for {model} in {region}",
              "Slow responses from {model} via {provider}", "Inference latency degradation on {service}"),
             ("p99 latency rose well above baseline for {model} served to {service} in {region}.",
              "Users of {service} report slow completions; time to first token climbing on {provider}.",
              "SLO burn rate alert: latency objective for {service} is being consumed fast."),
             _latency, (("briefly", -0.4), ("sustained", 0.4), ("", 0.0))),
    Scenario("error_burst", "availability", ("error_rate", "error_burst", "anomaly"),
             ("sentinel", "alertmanager", "pagerduty"), "endpoint", 0.9, 3.3,
             ("Error rate burst on {service}", "5xx errors {qualifier} from {provider} for {model}",
              "Elevated error rate calling {model}", "{service} returning errors in {region}"),
             ("Error rate for {service} jumped; upstream {provider} returns 5xx for {model}.",
              "A burst of failed completions for {model}; retries are exhausting the budget.",
              "HTTP 5xx from the inference gateway in {region} for {service}."),
             _errors, (("intermittent", -0.5), ("persistent", 0.5), ("", 0.0))),
    Scenario("token_quota", "availability", ("quota_exceeded", "rate_limit"),
             ("sentinel", "edge-agent", "pagerduty"), "api_key", 0.3, 3.0,
             ("Token quota nearly exhausted for {tenant}", "Rate limit (429) from {provider} for {model}",
              "{tenant} hitting tokens-per-minute quota", "Quota exceeded on {provider} account"),
             ("Tokens-per-minute usage for tenant {tenant} close to the {provider} quota; 429s observed.",
              "Requests to {model} rejected with rate limit errors; quota at the account limit.",
              "The {provider} organisation quota is nearly consumed by {service}."),
             _quota, (("approaching", -0.6), ("exceeded", 0.5), ("", 0.0))),
    Scenario("prompt_injection", "security", ("prompt_injection", "jailbreak_attempt", "policy_violation"),
             ("shield", "sentinel"), "model", 1.0, 3.2,
             ("Prompt injection {qualifier} against {service}", "Jailbreak attempt on {model}",
              "Malicious prompt pattern detected in {service}", "Indirect prompt injection via retrieved document"),
             ("Shield flagged instructions that try to override the system prompt of {service}.",
              "Repeated jailbreak prompts from tenant {tenant} targeting {model}.",
              "A retrieved web page contains hidden instructions aimed at the {service} agent."),
             _injection, (("suspected", -0.6), ("confirmed", 0.7), ("", 0.0))),
    Scenario("data_leakage", "security", ("data_leakage", "pii_exposure", "exfiltration"),
             ("shield", "governance"), "dataset", 1.5, 3.0,
             ("Possible data leakage in {service} responses", "PII exposure {qualifier} in {model} output",
              "Sensitive data returned to wrong tenant", "Training data exfiltration attempt on {model}"),
             ("Responses from {service} contain what looks like customer PII (emails, phone numbers).",
              "Cross-tenant data visible: {tenant} saw another tenant's documents through the RAG index.",
              "Model output reproduces memorised records; exfiltration pattern from one user."),
             _leak, (("suspected", -0.7), ("confirmed", 0.8), ("", 0.0))),
    Scenario("gpu_oom", "infrastructure", ("gpu_oom", "resource_exhaustion", "pod_crashloop"),
             ("edge-agent", "alertmanager", "sentinel"), "gpu_node", 0.7, 3.1,
             ("GPU out of memory on {gpu} node serving {model}", "CUDA OOM {qualifier} in {model} workers",
              "Inference pods crashlooping after OOM ({gpu})", "GPU memory exhaustion in {region}"),
             ("CUDA out of memory while loading batches for {model} on {gpu}; pods restarting.",
              "Kubernetes reports OOMKilled inference pods in {region}; capacity for {model} reduced.",
              "KV cache growth exhausted GPU memory on {gpu} nodes."),
             _gpu, (("single node", -0.5), ("cluster-wide", 0.6), ("", 0.0))),
    Scenario("model_drift", "quality", ("model_drift", "accuracy_regression", "eval_failure"),
             ("sentinel", "governance"), "model", 0.0, 2.9,
             ("Model drift detected for {model}", "Accuracy regression {qualifier} after {model} update",
              "Embedding drift on {service}", "Offline eval failing for {model}"),
             ("Distribution of inputs to {model} moved away from the reference window.",
              "Accuracy on the golden set dropped after the provider updated {model}.",
              "Retrieval quality for {service} degraded; embeddings drifted."),
             _drift, (("minor", -0.5), ("severe", 0.6), ("", 0.0))),
    Scenario("hallucination", "quality", ("hallucination", "groundedness_drop"),
             ("sentinel", "shield", "manual"), "model", 0.3, 2.8,
             ("Hallucination rate up for {service}", "Ungrounded answers {qualifier} from {model}",
              "{service} citing non-existent sources", "Groundedness score dropped on {model}"),
             ("Answers from {service} are not supported by the retrieved context.",
              "Users report fabricated citations in {model} answers.",
              "Groundedness evaluator flags a rising share of {model} responses."),
             _hallucination, (("occasional", -0.5), ("widespread", 0.6), ("", 0.0))),
    Scenario("provider_outage", "availability", ("provider_outage", "service_unavailable", "health_check_failed"),
             ("sentinel", "pagerduty", "alertmanager", "edge-agent"), "endpoint", 1.6, 2.9,
             ("{provider} outage affecting {model}", "{provider} API unavailable in {region}",
              "Inference endpoint down for {service}", "Health checks failing {qualifier} for {model}"),
             ("{provider} is not answering; every call to {model} times out or returns 503.",
              "The {region} inference endpoint of {service} fails health checks.",
              "Status page of {provider} reports a major outage; failover not yet complete."),
             _outage, (("partial", -0.6), ("all regions", 0.8), ("", 0.0))),
    Scenario("cost_anomaly", "cost", ("cost_anomaly", "budget_exceeded", "token_usage_spike"),
             ("sentinel", "governance"), "tenant", 0.0, 2.7,
             ("Cost anomaly: spend on {model} {qualifier} above baseline", "Daily budget exceeded for {tenant}",
              "Token usage spike from {service}", "Unexpected spend on {provider}"),
             ("Spend for {tenant} on {model} is far above the 7-day baseline.",
              "A runaway agent loop in {service} is consuming tokens at a high rate.",
              "Billing export shows an unexpected jump in {provider} usage."),
             _cost, (("slightly", -0.5), ("far", 0.5), ("", 0.0))),
    Scenario("throughput_saturation", "performance", ("throughput_drop", "queue_backlog", "capacity"),
             ("edge-agent", "alertmanager"), "gpu_node", 0.4, 3.0,
             ("Inference queue backlog on {service}", "Throughput drop {qualifier} for {model}",
              "GPU saturation serving {model} in {region}", "Request queue growing for {service}"),
             ("Tokens per second fell while the request queue for {model} grows.",
              "GPUs in {region} saturated; batching cannot keep up with {service} traffic.",
              "Autoscaler at max replicas; queue depth rising for {service}."),
             _throughput, (("slowly", -0.4), ("rapidly", 0.5), ("", 0.0))),
    Scenario("vector_db", "infrastructure", ("vector_index_degraded", "retrieval_failure"),
             ("sentinel", "alertmanager"), "vector_db", 0.3, 3.0,
             ("Vector index degraded for {service}", "Retrieval failures {qualifier} in {service}",
              "Embedding index lagging behind source", "Vector DB query errors in {region}"),
             ("Recall of the vector index for {service} dropped; queries return stale documents.",
              "Ingestion lag: new documents are missing from the {service} index.",
              "Vector database nodes in {region} return query errors."),
             _vector, (("degraded", -0.3), ("failing", 0.6), ("", 0.0))),
    Scenario("compliance_violation", "compliance", ("compliance_violation", "retention_breach", "audit_finding"),
             ("governance",), "dataset", 0.4, 3.1,
             ("GDPR retention policy violated for {service} logs", "Audit finding: {qualifier} missing consent records",
              "HIPAA data processed by non-compliant model {model}", "SOC2 control failure in {service}"),
             ("Prompt logs of {service} kept beyond the retention period.",
              "Governance audit found user data sent to {provider} without a processing agreement.",
              "Compliance scan: PHI detected in prompts routed to {model}."),
             _compliance, (("potential", -0.6), ("confirmed", 0.6), ("", 0.0))),
    Scenario("api_key_abuse", "security", ("credential_abuse", "unauthorized_access", "anomalous_usage"),
             ("shield", "sentinel"), "api_key", 0.8, 3.2,
             ("API key used from unknown IPs for {provider}", "Leaked credential {qualifier} abused against {model}",
              "Unauthorized access to {service} admin API", "Anomalous usage pattern on key of {tenant}"),
             ("The API key of {tenant} is used from many unknown addresses.",
              "A key committed to a public repository is being used to call {model}.",
              "Privilege escalation attempt against the {service} admin endpoints."),
             _keys, (("possibly", -0.6), ("actively", 0.7), ("", 0.0))),
    Scenario("toxicity", "quality", ("toxicity", "content_policy", "moderation_failure"),
             ("shield", "sentinel"), "model", 0.4, 2.9,
             ("Toxic output rate rising on {service}", "Content policy violations {qualifier} from {model}",
              "Moderation filter bypassed in {service}", "Harmful content reported by users of {service}"),
             ("The toxicity classifier flags more responses of {model} than usual.",
              "Moderation failed open for {service}; unsafe answers reached users.",
              "Users reported harmful content produced by {model}."),
             _toxicity, (("isolated", -0.5), ("repeated", 0.6), ("", 0.0))),
)

ENVIRONMENTS = (("production", 0.0, 0.78), ("staging", -1.5, 0.22))
# The service tier is tagged but does not move the severity on its own (the policy is per impact).
TIERS = (("1", 0.0, 0.3), ("2", 0.0, 0.45), ("3", 0.0, 0.25))


def _pick(rng: random.Random, weighted: tuple[tuple[str, float, float], ...]) -> tuple[str, float]:
    roll, acc = rng.random(), 0.0
    for name, points, weight in weighted:
        acc += weight
        if roll <= acc:
            return name, points
    return weighted[-1][0], weighted[-1][1]


def _level(points: float) -> int:
    """Severity points -> level index (0 = P0 .. 4 = P4)."""
    if points >= 3.3:
        return 0
    if points >= 2.5:
        return 1
    if points >= 1.6:
        return 2
    if points >= 0.8:
        return 3
    return 4


def _report(rng: random.Random, source: str, level: int) -> str:
    vocab = SOURCE_VOCAB[source]
    shift_probability, bias = SOURCE_SKEW[source]
    reported = level
    if rng.random() < shift_probability:
        step = bias if bias and rng.random() < 0.7 else rng.choice((-1, 1))
        reported = min(4, max(0, level + step))
        if rng.random() < 0.2:
            reported = rng.randrange(5)  # a badly tuned rule
    return vocab[reported]


def make_row(rng: random.Random) -> dict[str, str]:
    scenario = rng.choice(SCENARIOS)
    z = rng.betavariate(1.3, 1.6)
    environment, env_points = _pick(rng, ENVIRONMENTS)
    tier, tier_points = _pick(rng, TIERS)
    qualifier, qualifier_points = rng.choice(scenario.words) if scenario.words else ("", 0.0)
    slots = {"model": rng.choice(MODELS), "provider": rng.choice(PROVIDERS), "region": rng.choice(REGIONS),
             "service": rng.choice(SERVICES), "tenant": rng.choice(TENANTS), "gpu": rng.choice(GPUS),
             "qualifier": qualifier}
    title = " ".join(rng.choice(scenario.titles).format(**slots).split())
    description = rng.choice(scenario.descriptions).format(**slots)
    if qualifier and qualifier not in title:
        description = f"{description} Reported as {qualifier}."
    points = scenario.base + scenario.span * z + env_points + tier_points + qualifier_points
    level = _level(points)
    if rng.random() < SEVERITY_NOISE:
        level = min(4, max(0, level + rng.choice((-1, 1))))
    category = scenario.category
    if rng.random() < CATEGORY_NOISE:
        category = rng.choice([c for c in CATEGORIES if c != category])
    source = rng.choice(scenario.sources)
    event_type = rng.choice(scenario.event_types)
    tags = {"environment": environment, "tier": tier, "service": slots["service"], "region": slots["region"]}
    if rng.random() < 0.4:
        tags["team"] = rng.choice(["ml-platform", "inference", "trust-safety", "finops", "data-platform"])
    # Sources set their own category only sometimes, and not always the one people later agree on.
    source_category = ""
    roll = rng.random()
    if roll < 0.45:
        source_category = scenario.category
    elif roll < 0.55:
        source_category = rng.choice(CATEGORIES)
    metrics = scenario.metrics(rng, z)
    # Every integration estimates the blast radius (share of traffic/users/records touched); the
    # detectors also send their own anomaly score. Both are noisy views of the intensity.
    metrics["impact_score"] = round(min(1.0, max(0.0, z + rng.gauss(0.0, 0.02))), 3)
    if source in DETECTORS:
        metrics["anomaly_score"] = round(min(1.0, max(0.0, z + rng.gauss(0.0, 0.06))), 3)
    return {
        "title": title,
        "description": description,
        "source": source,
        "event_type": event_type,
        "category": source_category,
        "resource_type": scenario.resource_type if rng.random() < 0.85 else "",
        "source_severity": _report(rng, source, level),
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
