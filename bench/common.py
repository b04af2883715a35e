"""Shared bench tooling: a throwaway Postgres database + Redis db, gunicorn launching, and an HTTP
load generator (closed loop for max throughput, open loop at a fixed rate for latency).

The load generator runs in separate processes (so its CPU does not share the GIL with anything
else), each with a few threads; every request opens a fresh connection, as gunicorn's sync
workers close the connection after each response anyway. Latency in open-loop mode is measured
from the request's *scheduled* send time, so a stalled server cannot hide its queueing
(no coordinated omission).
"""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://root@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")

# body_factory(worker_index, sequence_number) -> bytes
BodyFactory = Callable[[int, int], bytes]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Environment:
    env: dict[str, str]
    db_name: str
    redis_db: int

    def close(self) -> None:
        import psycopg
        import redis

        redis.Redis.from_url(self.env["REDIS_URL"]).flushdb()
        if os.environ.get("BENCH_KEEP_DB"):  # kept for a look at the rows afterwards; drop it by hand
            print(f"database {self.db_name} kept (BENCH_KEEP_DB)", flush=True)
            return
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')


def make_environment() -> Environment:
    """A fresh Postgres database (migrated) and a free Redis db, like the test harness."""
    import psycopg
    import redis

    db_name = f"im_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    token = str(os.getpid())
    for number in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS_BASE}/{number}")
        if client.set("im:test-session-lock", token, nx=True, ex=3600):
            client.flushdb()
            client.set("im:test-session-lock", token, ex=3600)
            break
    else:
        raise RuntimeError("no free Redis database")
    data_dir = tempfile.mkdtemp(prefix="im-bench-")
    metrics_dir = Path(data_dir) / "metrics"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "DATABASE_URL": PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{db_name}",
        "REDIS_URL": f"{REDIS_BASE}/{number}",
        "CELERY_BROKER_URL": f"{REDIS_BASE}/{number}",
        "DATA_DIR": data_dir,
        "API_KEY_SECRET": secrets.token_urlsafe(32),
        "JWT_SECRET": secrets.token_urlsafe(48),
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    subprocess.run([sys.executable, "-m", "cli", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return Environment(env, db_name, number)


class Server:
    """A gunicorn process group on a free port."""

    def __init__(self, app: str, env: dict[str, str], workers: int = 2, config: str | None = None,
                 log: Path | None = None, worker_class: str = "sync") -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers),
                   "--worker-class", worker_class, "--log-level", "warning"]
        if config:
            command += ["--config", config]
        command.append(app)
        env = {**env, "API_HOST": "127.0.0.1", "API_PORT": str(self.port), "WEB_CONCURRENCY": str(workers)}
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,
                                        stdout=(log or Path(os.devnull)).open("a"), stderr=subprocess.STDOUT)
        self.wait_ready()

    def wait_ready(self, path: str = "/health/live", timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", path)
                if conn.getresponse().status < 500:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not come up")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@dataclass
class LoadResult:
    requests: int
    errors: int
    elapsed: float
    latencies_ms: list[float]
    statuses: dict[int, int]
    items: int  # events committed (from the response bodies' counts, or requests for single events)

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0

    @property
    def items_per_sec(self) -> float:
        return self.items / self.elapsed if self.elapsed else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(p / 100.0 * (len(ordered) - 1))))]

    def summary(self) -> str:
        return (f"{self.requests} req in {self.elapsed:.1f}s = {self.rps:,.0f} req/s"
                f" ({self.items_per_sec:,.0f} items/s); p50 {self.pct(50):.1f} ms p99 {self.pct(99):.1f} ms"
                f" max {self.pct(100):.1f} ms; statuses {dict(sorted(self.statuses.items()))}; errors {self.errors}")


def _one_request(port: int, path: str, body: bytes, headers: dict[str, str], count_items: bool) -> tuple[int, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        items = 1 if response.status in (200, 202) else 0
        if count_items and response.status == 202:
            items = int(json.loads(data).get("accepted", 0))
        return response.status, items
    finally:
        conn.close()


def _worker(index: int, port: int, path: str, headers: dict[str, str], factory: BodyFactory, duration: float,
            threads: int, rate: float | None, count_items: bool, queue: Any, start_at: float) -> None:
    import threading

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counters = {"errors": 0, "items": 0, "requests": 0}
    lock = threading.Lock()
    sequence = iter(range(10**9))

    def closed_loop(tid: int) -> None:
        while time.time() < start_at + duration:
            with lock:
                n = next(sequence)
            body = factory(index * 1000 + tid, n)
            t0 = time.perf_counter()
            try:
                status, items = _one_request(port, path, body, headers, count_items)
            except OSError:
                with lock:
                    counters["errors"] += 1
                continue
            elapsed = (time.perf_counter() - t0) * 1000
            with lock:
                latencies.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1
                counters["items"] += items
                counters["requests"] += 1

    def open_loop(tid: int) -> None:
        # each of `threads` threads owns every threads-th slot of this process's schedule
        assert rate is not None
        interval = 1.0 / rate
        slot = tid
        while True:
            scheduled = start_at + slot * interval
            if scheduled >= start_at + duration:
                return
            now = time.time()
            if scheduled > now:
                time.sleep(scheduled - now)
            body = factory(index * 1000 + tid, slot)
            try:
                status, items = _one_request(port, path, body, headers, count_items)
            except OSError:
                with lock:
                    counters["errors"] += 1
                slot += threads
                continue
            elapsed = (time.time() - scheduled) * 1000
            with lock:
                latencies.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1
                counters["items"] += items
                counters["requests"] += 1
            slot += threads

    target = open_loop if rate else closed_loop
    now = time.time()
    if start_at > now:
        time.sleep(start_at - now)
    pool = [threading.Thread(target=target, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    queue.put((latencies, statuses, counters))


def run_load(port: int, path: str, headers: dict[str, str], factory: BodyFactory, duration: float = 10.0,
             processes: int = 2, threads: int = 8, rate: float | None = None, count_items: bool = False) -> LoadResult:
    """Closed loop (as fast as `processes`x`threads` clients go) or open loop at `rate` req/s total."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    start_at = time.time() + 0.5
    per_process_rate = rate / processes if rate else None
    workers = [ctx.Process(target=_worker, args=(i, port, path, headers, factory, duration, threads,
                                                 per_process_rate, count_items, queue, start_at))
               for i in range(processes)]
    for w in workers:
        w.start()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = items = requests = 0
    for _ in workers:
        lat, st, counters = queue.get()
        latencies += lat
        for k, v in st.items():
            statuses[k] = statuses.get(k, 0) + v
        errors += counters["errors"]
        items += counters["items"]
        requests += counters["requests"]
    for w in workers:
        w.join()
    return LoadResult(requests, errors, duration, latencies, statuses, items)


def wait(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError


def ports_env(env: dict[str, str]) -> Iterator[str]:
    yield from (f"{k}={v}" for k, v in env.items() if k in ("DATABASE_URL", "REDIS_URL"))


# ------------------------------------------------------------------ where the CPU went

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _client_of_backends() -> dict[int, int]:
    """Postgres backend pid -> pid of the client process at the other end of its socket (`ss`)."""
    out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True).stdout
    port_owner: dict[str, int] = {}
    backend_peer: dict[int, str] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 5 or "pid=" not in parts[-1]:
            continue
        local, peer = parts[2], parts[3]
        pid = int(parts[-1].split("pid=", 1)[1].split(",", 1)[0])
        if local.endswith(":5432"):
            backend_peer[pid] = peer
        else:
            port_owner[local] = pid
    return {backend: port_owner[peer] for backend, peer in backend_peer.items() if peer in port_owner}


def _kind(cmdline: str) -> str:
    if "gunicorn" in cmdline:
        return "web"
    if "celery" in cmdline:
        return "workers"
    if "redis-server" in cmdline:
        return "redis"
    if "bench." in cmdline:
        return "load generator"
    return "other"


def cpu_snapshot() -> dict[str, float]:
    """CPU seconds used so far, by kind of process: web, workers, Postgres serving each of them
    (a backend counts for the process at the other end of its connection), Postgres's own
    background processes (WAL writer, checkpointer, autovacuum), Redis, the load generator."""
    clients = _client_of_backends()
    cmdlines: dict[int, str] = {}
    used: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cmdlines[int(name)] = cmdline
        # a load generator's processes are reaped when a phase ends: count them in the bench's own
        children = int(fields[13]) + int(fields[14]) if _kind(cmdline) == "load generator" else 0
        used[int(name)] = (int(fields[11]) + int(fields[12]) + children) / _CLOCK_TICKS
    totals: dict[str, float] = {}
    for pid, seconds in used.items():
        cmdline = cmdlines[pid]
        if cmdline.startswith("postgres:"):
            client = clients.get(pid)
            kind = f"postgres for {_kind(cmdlines.get(client, ''))}" if client else "postgres background"
        else:
            kind = _kind(cmdline)
        totals[kind] = totals.get(kind, 0.0) + seconds
    return totals


def cpu_split(before: dict[str, float], after: dict[str, float], events: int) -> dict[str, float]:
    """µs of CPU per event by kind between two snapshots (processes that ended in between are lost)."""
    return {kind: round((after.get(kind, 0.0) - before.get(kind, 0.0)) / max(events, 1) * 1e6, 1)
            for kind in sorted(set(before) | set(after)) if after.get(kind, 0.0) - before.get(kind, 0.0) > 0}
