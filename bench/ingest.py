"""Ingest benchmark (issue 3). Run: `flock /tmp/im-bench.lock .venv/bin/python -m bench.ingest`.

(a) single-event durable ingest on POST /api/v1/events/sentinel, 2 gunicorn workers of the class the
    Procfile runs (gevent), against a bare Flask+gunicorn app doing one autocommit INSERT per
    request into the same Postgres (bench/baseline_app.py), 2 workers of *each* class in
    --baseline-worker-class (sync and gevent by default): the faster of them is the baseline, so
    the ratio (>= 0.8) is against the bare app at its best. Same load generator, same run,
    alternating rounds; then p50/p99 at a fixed 500 req/s (open loop; p99 < 50 ms).
(b) batched ingest, {"events": [1,000]} per request -> events/s committed (>= 10,000).
(c) the alert storm (issue 11): 4 senders x 30 batches x 1,000 events over 1,000 fingerprints shared
    by all senders, shuffled per batch, so concurrent batches hit the same open incidents in
    different orders -> 0 non-2xx, >= 10,000 events/s accepted. Its baseline, in the same run, is
    the same shape with each sender's batches over its own 1,000 fingerprints (no two concurrent
    batches share an incident). Afterwards the database is checked: every event stored once, one
    open incident per fingerprint whose event_count is the number of events sent for it.

Every event is unique (own event_id and title, so each opens its own incident: the heaviest write).
No Celery worker runs: the web's work (commit + outbox + hand-off to Redis) is what is measured;
the drain tasks the web enqueues simply wait in Redis.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import subprocess
import sys
import threading
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


def storm_bodies(tag: str, senders: int, batches: int, size: int, fingerprints: int,
                 shared: bool) -> list[list[bytes]]:
    """Per sender, its batches: `size` unique events whose titles cycle over `fingerprints` values,
    shuffled per batch; `shared`: the same titles for every sender, else each sender its own."""
    rng = random.Random(7)
    template = dict(SENTINEL)
    plan = []
    for sender in range(senders):
        owner = "all" if shared else f"s{sender}"
        bodies = []
        for b in range(batches):
            events = []
            for i in range(size):
                event = dict(template)
                event["event_id"] = f"{tag}-{sender}-{b}-{i}"
                event["title"] = f"Endpoint {tag}-{owner}-{i % fingerprints} failing"
                events.append(event)
            rng.shuffle(events)
            bodies.append(json.dumps({"events": events}).encode())
        plan.append(bodies)
    return plan


def run_storm(port: int, headers: dict[str, str], plan: list[list[bytes]]) -> dict[str, object]:
    """Each sender (a thread) posts its batches back to back; all start together."""
    statuses: dict[int, int] = {}
    accepted = [0]
    lock = threading.Lock()
    start = threading.Barrier(len(plan) + 1)

    def sender(bodies: list[bytes]) -> None:
        start.wait()
        for body in bodies:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            try:
                conn.request("POST", "/api/v1/events", body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            finally:
                conn.close()
            with lock:
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status == 202:
                    accepted[0] += int(json.loads(data)["accepted"])

    threads = [threading.Thread(target=sender, args=(bodies,)) for bodies in plan]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    non_2xx = sum(n for status, n in statuses.items() if not 200 <= status < 300)
    return {"elapsed": elapsed, "accepted": accepted[0], "statuses": dict(sorted(statuses.items())),
            "non_2xx": non_2xx, "events_per_sec": accepted[0] / elapsed if elapsed else 0.0}


def incident_updates(database_url: str) -> tuple[int, int]:
    """(updates, of which in place: HOT) of the incidents table so far (the statistics collector
    flushes a backend's counters within a second of its transaction)."""
    import psycopg

    time.sleep(1.2)
    url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'incidents'"
                           ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def check_storm(database_url: str, tag: str, sent: int, per_fingerprint: int) -> str:
    """Every event stored once, one open incident per fingerprint, event_count = events sent."""
    import psycopg

    url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url) as conn:
        stored, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (source, event_id)) FROM events WHERE event_id LIKE %s",
            (f"{tag}-%",)).fetchone()
        rows = conn.execute(
            "SELECT count(*), min(event_count), max(event_count), count(DISTINCT fingerprint) FROM incidents "
            "WHERE title LIKE %s AND status IN ('NEW','ACKNOWLEDGED','IN_PROGRESS','ESCALATED')",
            (f"Endpoint {tag}-%",)).fetchone()
    ok = stored == distinct == sent and rows[0] == rows[3] and rows[1] == rows[2] == per_fingerprint
    return (f"{'OK' if ok else 'MISMATCH'}: events stored {stored} (distinct {distinct}, sent {sent}); "
            f"open incidents {rows[0]} over {rows[3]} fingerprints, event_count {rows[1]}..{rows[2]} "
            f"(expected {per_fingerprint})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--batch-distinct", type=int, action="append",
                        help="distinct fingerprints per batch (repeatable; 0 = all unique); default 0 and 20")
    parser.add_argument("--only", choices=["single", "rate", "batch", "storm"], action="append")
    parser.add_argument("--storm-senders", type=int, default=4)
    parser.add_argument("--storm-batches", type=int, default=30)
    parser.add_argument("--storm-fingerprints", type=int, default=1000)
    parser.add_argument("--worker-class", default="gevent",
                        help="gunicorn worker class of the incident manager (default: the Procfile's, gevent)")
    parser.add_argument("--baseline-worker-class", action="append",
                        help="worker class(es) of the bare baseline app, repeatable; the fastest counts "
                             "(default: sync and gevent)")
    args = parser.parse_args()
    only = set(args.only or ["single", "rate", "batch", "storm"])

    environment = make_environment()
    env = environment.env
    created = subprocess.run(
        [sys.executable, "-m", "cli", "apikey", "create", "--name", "bench", "--permission", "event:create",
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
        if "storm" in only:
            shape = (f"{args.storm_senders} senders x {args.storm_batches} batches x {args.batch_size} events over "
                     f"{args.storm_fingerprints} fingerprints")
            per_fp = args.storm_batches * args.batch_size // args.storm_fingerprints
            figures = {}
            updates = incident_updates(env["DATABASE_URL"])
            for kind, shared in (("disjoint", False), ("shared", True)):
                tag = f"storm{kind}"
                plan = storm_bodies(tag, args.storm_senders, args.storm_batches, args.batch_size,
                                    args.storm_fingerprints, shared)
                figures[kind] = result = run_storm(incident_manager.port, headers, plan)
                sent = args.storm_senders * args.storm_batches * args.batch_size
                check = check_storm(env["DATABASE_URL"], tag, sent, per_fp * (args.storm_senders if shared else 1))
                before, updates = updates, incident_updates(env["DATABASE_URL"])
                changed, in_place = updates[0] - before[0], updates[1] - before[1]
                print(f"[storm {kind}] {shape}: {result['accepted']:,} accepted in {result['elapsed']:.1f}s = "
                      f"{result['events_per_sec']:,.0f} events/s; statuses {result['statuses']}; {check}; "
                      f"incident updates {changed:,}, in place (HOT) {in_place / changed if changed else 0:.0%}",
                      flush=True)
            ratio = (figures["shared"]["events_per_sec"] / figures["disjoint"]["events_per_sec"]  # type: ignore[operator]
                     if figures["disjoint"]["events_per_sec"] else 0.0)
            print(f"RESULT storm, shared fingerprints: {figures['shared']['events_per_sec']:,.0f} events/s, "
                  f"{figures['shared']['non_2xx']} non-2xx (need 0 and >= 10,000); disjoint baseline "
                  f"{figures['disjoint']['events_per_sec']:,.0f} events/s; ratio {ratio:.2f}", flush=True)
    finally:
        for server in servers:
            server.stop()
        environment.close()


if __name__ == "__main__":
    time.sleep(0)
    main()
