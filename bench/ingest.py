"""Ingest benchmark (issue 3). Run: `flock /tmp/im-bench.lock .venv/bin/python -m bench.ingest`.

(a) single-event durable ingest on POST /api/v1/events/sentinel, 2 gunicorn workers of the class the
    Procfile runs (gevent), against a bare Flask+gunicorn app doing one autocommit INSERT per
    request into the same Postgres (bench/baseline_app.py), 2 workers of *each* class in
    --baseline-worker-class (sync and gevent by default): the faster of them is the baseline, so
    the ratio (>= 0.8) is against the bare app at its best. Same load generator, same run,
    alternating rounds; then p50/p99 at a fixed 500 req/s (open loop; p99 < 50 ms).
(b) batched ingest, {"events": [1,000]} per request -> events/s committed (>= 10,000).

Every event is unique (own event_id and title, so each opens its own incident: the heaviest write).
No Celery worker runs: the web's work (commit + outbox + hand-off to Redis) is what is measured;
the drain tasks the web enqueues simply wait in Redis.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.common import ROOT, Server, make_environment, run_load

SENTINEL = json.loads((ROOT / "tests" / "fixtures" / "sentinel-event.json").read_text())


def sentinel_factory(tag: str):  # type: ignore[no-untyped-def]
    template = dict(SENTINEL)

    def make(worker: int, n: int) -> bytes:
        event = dict(template)
        event["event_id"] = f"{tag}-{worker}-{n}"
        event["title"] = f"Latency Spike Detected {tag}-{worker}-{n}"
        return json.dumps(event).encode()

    return make


def batch_factory(tag: str, size: int, distinct: int = 0):  # type: ignore[no-untyped-def]
    """`distinct` > 0: titles cycle over that many values per batch (an alert storm that dedup
    folds into few incidents); 0: every event opens its own incident."""
    template = dict(SENTINEL)

    def make(worker: int, n: int) -> bytes:
        events = []
        for i in range(size):
            event = dict(template)
            event["event_id"] = f"{tag}-{worker}-{n}-{i}"
            suffix = f"{tag}-{worker}-{n}-{i % distinct}" if distinct else f"{tag}-{worker}-{n}-{i}"
            event["title"] = f"Latency Spike Detected {suffix}"
            events.append(event)
        return json.dumps({"events": events}).encode()

    return make


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--batch-distinct", type=int, action="append",
                        help="distinct fingerprints per batch (repeatable; 0 = all unique); default 0 and 20")
    parser.add_argument("--only", choices=["single", "rate", "batch"], action="append")
    parser.add_argument("--worker-class", default="gevent",
                        help="gunicorn worker class of the incident manager (default: the Procfile's, gevent)")
    parser.add_argument("--baseline-worker-class", action="append",
                        help="worker class(es) of the bare baseline app, repeatable; the fastest counts "
                             "(default: sync and gevent)")
    args = parser.parse_args()
    only = set(args.only or ["single", "rate", "batch"])

    environment = make_environment()
    env = environment.env
    created = subprocess.run(
        [sys.executable, "-m", "app.cli", "apikey", "create", "--name", "bench", "--permission", "event:create",
         "--rate-limit", "0"], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    key = created.stdout.strip().splitlines()[-1]
    headers = {"Content-Type": "application/json", "X-API-Key": key}
    baseline_classes = args.baseline_worker_class or ["sync", "gevent"]
    baselines = {cls: Server("bench.baseline_app:app", env, worker_class=cls) for cls in baseline_classes}
    incident_manager = Server("api.wsgi:app", env, config="python:api.gunicorn_conf", worker_class=args.worker_class)
    print(f"worker class: incident manager {args.worker_class}; baseline {', '.join(baseline_classes)} "
          f"(the fastest counts)", flush=True)
    print(f"database {environment.db_name}, redis db {environment.redis_db}; incident manager "
          f":{incident_manager.port}", flush=True)
    servers = [*baselines.values(), incident_manager]
    try:
        # warm all (imports, connection pools, the API key cache, prepared statements)
        for server in servers:
            run_load(server.port, "/api/v1/events/sentinel", headers, sentinel_factory(f"warm{server.port}"),
                     duration=2, processes=1, threads=4)
        baseline = baselines[baseline_classes[0]]
        if "single" in only:
            ratios = []
            for r in range(args.rounds):
                bases = {cls: run_load(server.port, "/api/v1/events/sentinel", headers,
                                       sentinel_factory(f"b{cls}{r}"), duration=args.duration)
                         for cls, server in baselines.items()}
                ours = run_load(incident_manager.port, "/api/v1/events/sentinel", headers,
                                sentinel_factory(f"s{r}"), duration=args.duration)
                best = max(bases, key=lambda cls: bases[cls].rps)
                baseline = baselines[best]
                ratio = ours.rps / bases[best].rps if bases[best].rps else 0.0
                ratios.append(ratio)
                for cls, base in bases.items():
                    print(f"[single round {r}] baseline ({cls}): {base.summary()}", flush=True)
                print(f"[single round {r}] incident-manager ({args.worker_class}): {ours.summary()}", flush=True)
                print(f"[single round {r}] ratio {ratio:.2f} (against the {best} baseline)", flush=True)
            print(f"RESULT single-event ratio: best {max(ratios):.2f} worst {min(ratios):.2f} (need >= 0.8)",
                  flush=True)
        if "rate" in only:
            for name, server in (("baseline", baseline), ("incident-manager", incident_manager)):
                fixed = run_load(server.port, "/api/v1/events/sentinel", headers, sentinel_factory(f"rate{name}"),
                                 duration=args.duration, processes=2, threads=16, rate=args.rate)
                print(f"RESULT fixed {args.rate:.0f} req/s, {name}: {fixed.summary()} (need p99 < 50 ms)",
                      flush=True)
        if "batch" in only:
            for distinct in args.batch_distinct or [0, 20]:
                batch = run_load(incident_manager.port, "/api/v1/events", headers,
                                 batch_factory(f"batch{distinct}", args.batch_size, distinct),
                                 duration=args.duration, processes=1, threads=3, count_items=True)
                kind = f"{distinct} incidents per batch" if distinct else "every event a new incident"
                print(f"RESULT batched {args.batch_size}/request ({kind}): {batch.summary()} -> "
                      f"{batch.items_per_sec:,.0f} events/s committed (need >= 10,000)", flush=True)
    finally:
        for server in servers:
            server.stop()
        environment.close()


if __name__ == "__main__":
    time.sleep(0)
    main()
