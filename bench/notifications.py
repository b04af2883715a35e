"""Benchmark of notification delivery (a throwaway Postgres database and Redis db, real Celery workers,
receivers on loopback).

1. Throughput: N webhook delivery records (default 10,000) sent by beat's dispatch and
   `notifications.deliver_due` runs on 2 worker processes to a keep-alive loopback receiver;
   records/s from the records' commit to the last `sent` (after a 100-record warm-up, so worker
   start-up is not counted). Baseline in the same run: the same number
   of bare httpx POSTs to the same receiver from 2 processes (the floor any sender pays). The
   receiver counts the distinct Idempotency-Key values it saw and every repeat (duplicates).
2. Fast failure: with the target's breaker forced open, `http_client.send` timed 2,000 times.
3. Isolation: 20 records to a target that answers after 5 s (timeout 5 s) mixed into 2,000 to the
   fast one; how long the fast ones take, against the same 2,000 alone.

    flock /tmp/im-bench.lock .venv/bin/python -m bench.notifications [--records 10000] [--threads 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import ROOT, free_port, make_environment


def _receiver(port: int, delay: float, counter: Any, duplicates: Any) -> None:
    """A minimal keep-alive HTTP/1.1 server answering 204 (after `delay` seconds); counts requests
    and requests whose Idempotency-Key it had already seen."""
    keys: set[bytes] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length, key = 0, b""
                for line in head.split(b"\r\n"):
                    lower = line.lower()
                    if lower.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                    elif lower.startswith(b"idempotency-key:"):
                        key = line.split(b":", 1)[1].strip()
                if key:
                    if key in keys:
                        with duplicates.get_lock():
                            duplicates.value += 1
                    keys.add(key)
                if length:
                    await reader.readexactly(length)
                if delay:
                    await asyncio.sleep(delay)
                with counter.get_lock():
                    counter.value += 1
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _raw_posts(port: int, count: int) -> None:
    import httpx

    with httpx.Client() as client:
        for i in range(count):
            client.post(f"http://127.0.0.1:{port}/hook", content=b'{"n": %d}' % i,
                        headers={"Content-Type": "application/json"})


def _uptime() -> str:
    return Path("/proc/loadavg").read_text().split(" ")[0]


def _seed(records: int, hook: str, step_prefix: str) -> None:
    """One incident (as escalation would leave it) and `records` pending webhook deliveries."""
    from datetime import datetime, timezone

    from sqlalchemy import select, update

    from app.adapters.db import unit_of_work
    from app.adapters.escalation_models import User
    from app.adapters.models import Incident
    from app.services.deliveries import Page, delivery_rows, insert_deliveries

    now = datetime.now(timezone.utc)
    with unit_of_work() as session:
        incident_id = session.scalars(select(Incident.id)).first()
        if session.get(User, f"user-{hook}") is None:
            session.add(User(name=f"user-{hook}", contact={"webhook": hook}))
        session.execute(update(Incident).values(escalation_token="bench-token"))
        rows = delivery_rows(incident_id, "bench-token", "x", 1, [Page(f"user-{hook}", "user", "u", "direct")],
                             ["webhook"], {}, now)
        template = rows[0]
        batch = [{**template, "step": f"{step_prefix}{i}", "idempotency_key": f"{incident_id}:{step_prefix}{i}:{hook}"}
                 for i in range(records)]
        for start in range(0, len(batch), 5000):
            insert_deliveries(session, batch[start:start + 5000])


def _sent(step_prefix: str) -> int:
    from sqlalchemy import func, select

    from app.adapters.db import read_session
    from app.adapters.escalation_models import NotificationDelivery

    with read_session() as session:
        return int(session.scalar(select(func.count()).select_from(NotificationDelivery).where(
            NotificationDelivery.status.in_(("sent", "failed")), NotificationDelivery.step.like(f"{step_prefix}%")))
                   or 0)


def _resent() -> int:
    from sqlalchemy import func, select

    from app.adapters.db import read_session
    from app.adapters.escalation_models import NotificationDelivery

    with read_session() as session:
        return int(session.scalar(select(func.count()).select_from(NotificationDelivery).where(
            NotificationDelivery.attempts > 1)) or 0)


def _wait_sent(step_prefix: str, records: int, timeout: float) -> float:
    started = time.perf_counter()
    while _sent(step_prefix) < records:
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"only {_sent(step_prefix)} of {records} sent after {timeout} s")
        time.sleep(0.05)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=32, help="sender threads per worker process")
    parser.add_argument("--log-level", default="WARNING", help="the workers' log level")
    parser.add_argument("--profile", default="", help="a directory: run the workers under py-spy record --gil "
                        "(collapsed stacks per worker; needs py-spy installed)")
    args = parser.parse_args()

    environment = make_environment()
    fast_port, slow_port = free_port(), free_port()
    fast_count, slow_count = mp.Value("q", 0), mp.Value("q", 0)
    fast_dups, slow_dups = mp.Value("q", 0), mp.Value("q", 0)
    receivers = [mp.Process(target=_receiver, args=(fast_port, 0.0, fast_count, fast_dups), daemon=True),
                 mp.Process(target=_receiver, args=(slow_port, 5.0, slow_count, slow_dups), daemon=True)]
    for receiver in receivers:
        receiver.start()
    config = Path(environment.env["DATA_DIR"]) / "config.yaml"
    config.write_text(yaml.safe_dump({
        "notifications": {"http": {"allow_private": ["127.0.0.1/32"], "max_connections": 200}},
        "integrations": {"webhooks": [
            {"name": "fast-hook", "url": f"http://127.0.0.1:{fast_port}/hook", "triggers": [{"event": "escalated"}]},
            {"name": "slow-hook", "url": f"http://127.0.0.1:{slow_port}/hook", "triggers": [{"event": "escalated"}],
             "timeout_ms": 5000, "retry": {"max_attempts": 1}}]},
        "circuit_breakers": {"slow-hook": {"failure_threshold": 1000, "volume_threshold": 100_000}},
    }))
    env = {**environment.env, "CONFIG_FILE": str(config), "NOTIFICATIONS_DISPATCH_SECS": "0.5",
           "NOTIFICATION_MAX_ATTEMPTS": "1", "LOG_LEVEL": args.log_level,
           "NOTIFICATION_SEND_THREADS": str(args.threads)}
    os.environ.update(env)
    workers: list[subprocess.Popen[bytes]] = []
    results: dict[str, Any] = {"load_before": _uptime()}
    try:
        from api import create_app
        from app.adapters import http_client
        from app.services import circuit_breakers
        from app.services.auth import create_api_key

        key = create_api_key("bench", ["admin"], 0, None).key
        created = create_app().test_client().post("/api/v1/incidents", headers={"X-API-Key": key}, json={
            "title": "Latency Spike Detected", "severity": "P1", "source": "llm-sentinel"})
        assert created.status_code == 201, created.get_data(as_text=True)

        # baseline: bare httpx POSTs from 2 processes
        per = args.records // 2
        started = time.perf_counter()
        posters = [mp.Process(target=_raw_posts, args=(fast_port, per)) for _ in range(2)]
        for poster in posters:
            poster.start()
        for poster in posters:
            poster.join()
        baseline = time.perf_counter() - started
        results["baseline_raw_posts_per_sec"] = round(2 * per / baseline)

        command = [sys.executable, "-m", "celery", "-A", "tasks.celery_app", "worker", "-Q", "notifications",
                   "--pool", "threads", "--concurrency", "4", "--loglevel", args.log_level,
                   "--without-gossip", "--without-mingle"]
        log = open(Path(environment.env["DATA_DIR"]) / "workers.log", "w")
        for i in range(2):
            profiler: list[str] = []
            if args.profile:
                Path(args.profile).mkdir(parents=True, exist_ok=True)
                profiler = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "--gil",
                            "--nonblocking", "-r", "200", "-o", str(Path(args.profile) / f"worker{i}.txt"), "--"]
            workers.append(subprocess.Popen([*profiler, *command, "-n", f"bench{i}@%h"], cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True))
        workers.append(subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks.celery_app", "beat",
                                         "--schedule", str(Path(environment.env["DATA_DIR"]) / "beat"),
                                         "--loglevel", "WARNING"], cwd=ROOT, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True))
        # warm-up: workers and beat started, connections open; then the timed records
        _seed(100, "fast-hook", "w")
        _wait_sent("w", 100, 300)
        _seed(args.records, "fast-hook", "t")
        elapsed = _wait_sent("t", args.records, 900)
        results["delivered"] = _sent("t")
        results["receiver_requests"] = fast_count.value
        results["receiver_duplicate_keys"] = fast_dups.value
        results["delivered_per_sec"] = round(args.records / elapsed)
        results["ratio_to_raw_posts"] = round(results["delivered_per_sec"] / results["baseline_raw_posts_per_sec"], 3)
        results["load_during_throughput"] = _uptime()

        # fast failure while open
        circuit_breakers.force_open("fast-hook", actor="bench")
        timings = []
        for _ in range(2000):
            t0 = time.perf_counter()
            try:
                http_client.send("fast-hook", "POST", f"http://127.0.0.1:{fast_port}/hook", content=b"{}")
            except http_client.DeliveryError:
                pass
            timings.append((time.perf_counter() - t0) * 1000)
        circuit_breakers.reset("fast-hook", actor="bench")
        timings.sort()
        results["open_breaker_send_ms"] = {"p50": round(statistics.median(timings), 4),
                                           "p99": round(timings[int(len(timings) * 0.99)], 4),
                                           "max": round(timings[-1], 3)}

        # isolation: fast deliveries alone, then with 20 slow ones mixed in
        alone = 2000
        _seed(alone, "fast-hook", "a")
        results["fast_2000_alone_secs"] = round(_wait_sent("a", alone, 300), 2)
        _seed(20, "slow-hook", "s")
        _seed(alone, "fast-hook", "m")
        results["fast_2000_with_20_slow_secs"] = round(_wait_sent("m", alone, 300), 2)
        results["slow_20_done_secs"] = round(_wait_sent("s", 20, 300), 2)
        results["records_attempted_more_than_once"] = _resent()
        results["receiver_duplicate_keys_total"] = fast_dups.value + slow_dups.value
        results["load_after"] = _uptime()
    finally:
        for worker in workers:
            try:
                os.killpg(worker.pid, 2 if args.profile else 15)  # py-spy writes its profile on SIGINT
                worker.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(worker.pid, 9)
        for receiver in receivers:
            receiver.terminate()
        environment.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
