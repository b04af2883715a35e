"""gRPC CreateIncident throughput: one client process, 8 concurrent calls in flight.

    flock /tmp/im-bench.lock .venv/bin/python bench/grpc_ingest.py [--seconds 10] [--concurrency 8]
        [--new-incidents] [--auto-page]

Starts the real `incident-manager grpc serve` process on a throwaway database, then measures
(1) the same-run baseline: the standard health Check RPC (no database), and (2) CreateIncident with
distinct events (each one committed before its answer), and prints calls/s, the ratio, and the CPU
each CreateIncident call cost the server process, this client process and Postgres (backends of
the run's database and the WAL writer): calls/s swing with whatever else runs on the machine, CPU
per call much less.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.doors_support import bench_environment, free_port, postgres_cpu_secs, process_cpu_secs  # noqa: E402

_sequence = itertools.count()  # across runs: the warm-up's events must not come back as duplicates


async def run_load(call: Callable[[int], Awaitable[Any]], seconds: float,
                   concurrency: int) -> tuple[float, list[float]]:
    """`concurrency` calls in flight at all times on one channel (one client process, asyncio)."""
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    counter = _sequence

    async def worker() -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            await call(next(counter))
            latencies.append(time.perf_counter() - started)

    began = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - began
    return len(latencies) / elapsed, sorted(latencies)


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] * 1000 if values else 0.0


def cpu_secs(server_pid: int, database: str) -> tuple[float, float, float]:
    """(server, this client, Postgres) CPU seconds used so far."""
    times = os.times()
    return process_cpu_secs(server_pid), times.user + times.system, postgres_cpu_secs(database)


async def measure(port: int, key: str, seconds: float, concurrency: int, ceiling: float,
                  server_pid: int, database: str, new_incidents: bool = False) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    import proto

    pb2, pb2_grpc = proto.load()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        health = health_pb2_grpc.HealthStub(channel)
        stub = pb2_grpc.IncidentServiceStub(channel)
        metadata = (("authorization", f"Bearer {key}"),)
        run_id = os.getpid()

        async def check(_: int) -> None:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=10)

        async def create(n: int) -> None:
            await stub.CreateIncident(pb2.CreateIncidentRequest(
                event_id=f"bench-{run_id}-{n}", source="llm-shield",
                title=f"Prompt injection {n if new_incidents else n % 500}",
                severity="critical", event_type="violation", category="security",
                resource=pb2.Resource(type="model", id=f"model-{n % 50}"), tags={"environment": "bench"},
                encrypted_payload=b"x" * 64), metadata=metadata, timeout=10)

        await run_load(create, 1.0, concurrency)  # warm-up: pools, the day's sequence
        base_rate, _ = await run_load(check, seconds / 2, concurrency)
        cpu_before = cpu_secs(server_pid, database)
        rate, latencies = await run_load(create, seconds, concurrency)
        cpu_after = cpu_secs(server_pid, database)
        server_cpu, client_cpu, pg_cpu = (
            (after - before) / len(latencies) * 1e6 for before, after in zip(cpu_before, cpu_after, strict=True))
    return "\n".join([
        f"baseline health Check:  {base_rate:8.0f} calls/s  ({concurrency} in flight, same server, no database)",
        f"CreateIncident:         {rate:8.0f} calls/s  p50 {pct(latencies, .5):.1f} ms"
        f"  p99 {pct(latencies, .99):.1f} ms"
        f"  ({len(latencies)} events committed)",
        f"ratio CreateIncident / health baseline: {rate / base_rate:.2f}; / ingest service alone: {rate / ceiling:.2f}",
        f"CPU per CreateIncident call: server {server_cpu:.0f} µs, client {client_cpu:.0f} µs, "
        f"Postgres {pg_cpu:.0f} µs; total {server_cpu + client_cpu + pg_cpu:.0f} µs "
        f"({(server_cpu + client_cpu + pg_cpu) * rate / 1e6:.2f} cores busy)",
    ])


def group_commit_ceiling(seconds: float, concurrency: int, new_incidents: bool = False) -> float:
    """Same-run ceiling: the service CreateIncident calls (group commit + ingest), no gRPC."""
    import threading

    from app.services.group_commit import GroupCommitter
    from app.services.ingest import NewEvent, ingest_events
    from tasks.dispatch import dispatch_pipeline

    committer = GroupCommitter(lambda events: ingest_events(events, dispatcher=dispatch_pipeline, door="bench"))
    stop = time.monotonic() + seconds
    done = [0] * concurrency

    def work(slot: int) -> None:
        n = 0
        while time.monotonic() < stop:
            committer.submit(NewEvent(source="llm-shield", event_id=f"ceiling-{os.getpid()}-{slot}-{n}",
                                      title=f"Prompt injection {f'{slot}-{n}' if new_incidents else n % 500}",
                                      raw={}, severity="critical",
                                      event_type="violation", category="security",
                                      resource={"type": "model", "id": f"model-{n % 50}"},
                                      tags={"environment": "bench"}, encrypted_payload=b"x" * 64))
            n += 1
        done[slot] = n

    threads = [threading.Thread(target=work, args=(i,)) for i in range(concurrency)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - began)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--new-incidents", action="store_true",
                        help="every call opens its own incident (default: 500 titles, so most calls join one)")
    parser.add_argument("--auto-page", action="store_true",
                        help="Shield's routing.auto_page on (guide §3): every incident opened at P0 is paged")
    args = parser.parse_args()
    with bench_environment() as env:
        if args.auto_page:
            config = Path(env["DATA_DIR"]) / "config.yaml"
            config.write_text("integrations:\n  llm-shield:\n    routing:\n      default_team: security-team\n"
                              "      escalation_policy: security-critical\n      auto_page: true\n")
            os.environ["CONFIG_FILE"] = str(config)
            from app.config import reset_settings_cache

            reset_settings_cache()
        from app.services.auth import create_api_key

        key = create_api_key("bench", ["event:create"], 0).key
        ceiling = group_commit_ceiling(args.seconds / 2, args.concurrency, args.new_incidents)
        port = free_port()
        log = open(Path(env["DATA_DIR"]) / "grpc.log", "w")
        server = subprocess.Popen([sys.executable, "-m", "cli", "grpc", "serve", "--address", f"127.0.0.1:{port}"],
                                  env={**os.environ, "GRPC_MAX_WORKERS": "16"}, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            print(f"ingest service alone (in-process GroupCommitter, {args.concurrency} threads): "
                  f"{ceiling:8.0f} events/s")
            database = env["DATABASE_URL"].rsplit("/", 1)[1]
            print(asyncio.run(measure(port, key, args.seconds, args.concurrency, ceiling, server.pid, database,
                                      args.new_incidents)))
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
