"""Benchmark of the GraphQL door (a throwaway Postgres database and Redis db).

1. Governance query (integration guide §5, verbatim) over 10,000 incidents created in November
   2025, in-process through the Flask app (auth, parsing, limits, execution, JSON), median of 10;
   baseline in the same run: the REST calls that answer the same (GET /api/v1/incidents with the
   filters, limit 100, and GET /api/v1/metrics/incidents grouped by severity).
2. incidentMetrics over 1,000,000 incidents (bench/escalation.py's loader, 30 days), median of 5;
   baseline: GET /api/v1/metrics/incidents with the same range and grouping.
3. Subscription delivery: one gunicorn web process (gevent worker), 500 graphql-transport-ws
   subscribers of `newIncidents`, 20 incidents created through REST one after another; latency of
   each delivery from the moment its POST was sent, p50/p95/max over the 10,000 deliveries;
   baseline: the POST's own answer time.

    flock /tmp/im-bench.lock .venv/bin/python -m bench.graphql [--incidents 10000] [--metrics 1000000]
        [--subscribers 500] [--creates 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.common import Server, make_environment
from bench.escalation import INSERT_INCIDENTS, _load

METRICS_QUERY = """query($start: DateTime, $end: DateTime) { incidentMetrics(timeRange: {start: $start, end: $end},
  groupBy: [SEVERITY]) { totalIncidents bySeverity { severity count } averageMTTR averageMTTA slaCompliance } }"""


def _loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def _median(fn: Any, runs: int) -> tuple[float, Any]:
    timings, out = [], None
    for _ in range(runs):
        started = time.perf_counter()
        out = fn()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings), out


def governance_bench(engine: Any, client: Any, key: str, count: int) -> dict[str, Any]:
    from tests.integration.test_graphql import GOVERNANCE_QUERY

    start = datetime(2025, 11, 1, tzinfo=timezone.utc)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE incidents CASCADE"))
        conn.execute(text(INSERT_INCIDENTS), {"policy": "bench", "due": 0, "now": start, "count": count,
                                              "open_only": False, "start": start, "span": 29 * 86400.0})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE incidents"))
    headers = {"X-API-Key": key}

    def graphql() -> Any:
        response = client.post("/graphql", json={"query": GOVERNANCE_QUERY}, headers=headers)
        assert response.status_code == 200 and "errors" not in response.get_json(), response.get_data(as_text=True)
        return response.get_json()["data"]

    def rest() -> Any:
        listing = client.get("/api/v1/incidents?limit=100&severity=P0,P1&category=security,compliance"
                             "&created_after=2025-11-01T00:00:00Z&created_before=2025-11-30T23:59:59Z", headers=headers)
        metrics = client.get("/api/v1/metrics/incidents?from=2025-11-01T00:00:00Z&to=2025-12-01T00:00:00Z"
                             "&group_by=severity", headers=headers)
        assert listing.status_code == metrics.status_code == 200
        return listing.get_json()

    graphql()
    rest()  # warm both
    load = _loadavg()
    graphql_secs, data = _median(graphql, 10)
    rest_secs, _ = _median(rest, 10)
    return {"incidents": count, "matched": data["incidents"]["totalCount"],
            "page": len(data["incidents"]["edges"]), "graphql_median_ms": round(graphql_secs * 1000, 1),
            "rest_baseline_median_ms": round(rest_secs * 1000, 1),
            "ratio_graphql_vs_rest": round(graphql_secs / rest_secs, 2),
            "target_ms": 500, "loadavg_before": load, "loadavg_after": _loadavg()}


def metrics_bench(engine: Any, client: Any, key: str, count: int) -> dict[str, Any]:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE incidents, analytics_daily, analytics_days, analytics_dirty CASCADE"))
    load_secs = _load(engine, count, 0, False, 30 * 86400)
    from app.services import analytics

    started = time.perf_counter()
    rolled = analytics.rollup(limit=62)  # what beat's analytics.rollup does after an import
    rollup_secs = time.perf_counter() - started
    end = datetime.now(timezone.utc) + timedelta(seconds=1)
    start = end - timedelta(days=31)
    headers = {"X-API-Key": key}
    variables = {"start": start.isoformat(), "end": end.isoformat()}

    def graphql() -> Any:
        response = client.post("/graphql", json={"query": METRICS_QUERY, "variables": variables}, headers=headers)
        assert response.status_code == 200 and "errors" not in response.get_json(), response.get_data(as_text=True)
        return response.get_json()["data"]["incidentMetrics"]

    def rest() -> Any:
        window = {"from": start.isoformat(), "to": end.isoformat(), "group_by": "severity"}
        response = client.get("/api/v1/metrics/incidents", query_string=window, headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    load = _loadavg()
    graphql_secs, out = _median(graphql, 5)
    rest_secs, _ = _median(rest, 5)
    return {"incidents": count, "load_secs": round(load_secs, 1), "counted": out["totalIncidents"],
            "rollup": {"days": rolled["days"], "secs": round(rollup_secs, 2)},
            "graphql_median_ms": round(graphql_secs * 1000, 1), "rest_baseline_median_ms": round(rest_secs * 1000, 1),
            "ratio_graphql_vs_rest": round(graphql_secs / rest_secs, 2), "target_ms": 1000,
            "loadavg_before": load, "loadavg_after": _loadavg()}


async def _subscribers(url: str, key: str, count: int, creates: int, post: Any) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    received: list[tuple[str, float]] = []
    sockets = []
    for _ in range(count):
        ws = await connect(url, subprotocols=["graphql-transport-ws"], open_timeout=60, max_queue=None)  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {key}"}}))
        assert json.loads(await ws.recv()) == {"type": "connection_ack"}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {
            "query": "subscription { newIncidents { id title severity createdAt } }"}}))
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv()) == {"type": "pong"}
        sockets.append(ws)

    async def reader(ws: Any) -> None:
        async for raw in ws:
            message = json.loads(raw)
            if message.get("type") == "next":
                received.append((message["payload"]["data"]["newIncidents"]["id"], time.perf_counter()))

    readers = [asyncio.create_task(reader(ws)) for ws in sockets]
    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    answer_secs = []
    for i in range(creates):
        started = time.perf_counter()
        incident_id = await asyncio.to_thread(post, i)
        answer_secs.append(time.perf_counter() - started)
        sent[incident_id] = started
        answered[incident_id] = time.perf_counter()
        await asyncio.sleep(0.2)
    deadline = time.monotonic() + 60
    while len(received) < count * creates and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    for task in readers:
        task.cancel()
    for ws in sockets:
        await ws.close()
    lags = sorted(at - sent[incident_id] for incident_id, at in received if incident_id in sent)
    arrivals: dict[str, list[float]] = {}
    for incident_id, at in received:
        arrivals.setdefault(incident_id, []).append(at)
    after_answer = sorted(at - answered[i] for i, times in arrivals.items() if i in answered for at in times)
    spread = sorted(max(times) - min(times) for times in arrivals.values())
    p95 = lags[int(0.95 * (len(lags) - 1))] if lags else float("nan")
    return {"subscribers": count, "creates": creates, "deliveries": len(lags), "expected": count * creates,
            "delivery_p50_ms": round(statistics.median(lags) * 1000, 1) if lags else None,
            "delivery_p95_ms": round(p95 * 1000, 1), "delivery_max_ms": round(lags[-1] * 1000, 1) if lags else None,
            "after_post_answer_p95_ms": round(after_answer[int(0.95 * (len(after_answer) - 1))] * 1000, 1)
            if after_answer else None,
            "fanout_spread_p95_ms": round(spread[int(0.95 * (len(spread) - 1))] * 1000, 1) if spread else None,
            "rest_post_median_ms": round(statistics.median(answer_secs) * 1000, 1),
            "ratio_p95_vs_post": round(p95 / statistics.median(answer_secs), 2), "target_p95_ms": 1000}


def subscription_bench(environment: Any, key: str, count: int, creates: int) -> dict[str, Any]:
    import httpx

    log = Path(environment.env["DATA_DIR"]) / "web.log"
    server = Server("api.wsgi:app", {**environment.env, "WS_IDLE_TIMEOUT_SECS": "600"}, workers=1,
                    config="python:api.gunicorn_conf", log=log, worker_class="gevent")
    try:
        base = f"http://127.0.0.1:{server.port}"

        def post(i: int) -> str:
            response = httpx.post(f"{base}/api/v1/incidents", headers={"X-API-Key": key}, timeout=30,
                                  json={"title": f"bench incident {i}", "severity": "P1", "source": "bench"})
            assert response.status_code == 201, response.text
            return str(response.json()["id"])

        load = _loadavg()
        out = asyncio.run(_subscribers(base.replace("http://", "ws://") + "/graphql/ws", key, count, creates, post))
        return {**out, "loadavg_before": load, "loadavg_after": _loadavg()}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--incidents", type=int, default=10_000)
    parser.add_argument("--metrics", type=int, default=1_000_000)
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--creates", type=int, default=20)
    parser.add_argument("--only", choices=("governance", "subscriptions", "metrics"))
    args = parser.parse_args()
    environment = make_environment()
    try:
        os.environ.update(environment.env)
        from app.adapters.db import get_engine, reset_engine
        from app.config import reset_settings_cache

        reset_settings_cache()
        reset_engine()
        engine = get_engine()
        from api import create_app
        from app.services.auth import create_api_key

        key = create_api_key("bench", ["admin"], 0, None).key
        client = create_app().test_client()
        if args.only in (None, "governance"):
            print(json.dumps({"governance": governance_bench(engine, client, key, args.incidents)}, indent=2),
                  flush=True)
        if args.subscribers and args.only in (None, "subscriptions"):
            print(json.dumps({"subscriptions": subscription_bench(environment, key, args.subscribers, args.creates)},
                             indent=2), flush=True)
        if args.metrics and args.only in (None, "metrics"):
            print(json.dumps({"incident_metrics": metrics_bench(engine, client, key, args.metrics)}, indent=2),
                  flush=True)
        reset_engine()
    finally:
        environment.close()


if __name__ == "__main__":
    main()
