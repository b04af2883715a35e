"""WebSocket ingest: batched events/s on one connection, and 500 idle connections' memory.

    flock /tmp/im-bench.lock .venv/bin/python bench/ws_ingest.py [--batches 40] [--batch-size 500] [--idle 500]

Starts the Procfile's `web` (gunicorn, api/gunicorn_conf.py; WEB_WORKER_CLASS from the environment,
gevent by default) on a throwaway database and measures, on one connection:
(1) the same-run baseline: heartbeat round trips/s (no database);
(2) batches of gzip+base64 events (the edge agent's encoding) sent without waiting for acks, as
    the guide's agent does; the clock stops at the last ack (each sent after its commit);
then (3) the worker's RSS with N idle connections open (handshake done, nothing sent).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect as aconnect
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.doors_support import bench_environment, free_port  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def worker_pid(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return int(children[0])


def edge_event(i: int) -> dict:
    return {"event_id": f"edge-bench-{os.getpid()}-{i}", "source": "llm-edge-agent", "event_type": "alert",
            "category": "availability", "title": f"Rate Limit Exceeded {i % 200}", "severity": "medium",
            "resource": {"type": "tenant", "id": f"tenant-{i % 100}", "name": "Acme"},
            "metrics": {"current_rpm": 12500, "limit_rpm": 10000}, "tags": {"edge_location": "edge-us-east-1-a"}}


async def hold_idle(url: str, count: int, pid: int) -> tuple[int, int]:
    """Open `count` connections, one JWT subject each (as `count` edge agents would)."""
    from app.services.auth import create_token

    connections = []
    before = rss_kib(pid)
    for start in range(0, count, 50):
        opened = await asyncio.gather(*(
            aconnect(url, additional_headers={"Authorization": f"Bearer {create_token(f'edge-agent-{i}', 3600)}"},
                     open_timeout=30, ping_interval=None)
            for i in range(start, min(count, start + 50))))
        for ws in opened:
            await ws.recv()  # connection_ack
        connections.extend(opened)
    await asyncio.sleep(1)
    held = rss_kib(pid)
    await asyncio.gather(*(ws.close() for ws in connections))
    return before, held


def ingest_ceiling(batch_size: int, batches: int) -> float:
    """Same-run ceiling: the ingest service itself on batches of the same shape, no WebSocket."""
    from app.services.ingest import NewEvent, ingest_events
    from tasks.dispatch import dispatch_pipeline

    def batch(b: int) -> list[NewEvent]:
        events = []
        for i in range(batch_size):
            raw = edge_event(10**8 + b * batch_size + i)
            events.append(NewEvent(source=raw["source"], event_id=raw["event_id"], title=raw["title"], raw=raw,
                                   event_type=raw["event_type"], category=raw["category"], severity=raw["severity"],
                                   resource=raw["resource"], metrics=raw["metrics"], tags=raw["tags"]))
        return events

    prepared = [batch(b) for b in range(batches + 1)]
    ingest_events(prepared[0], dispatcher=dispatch_pipeline, door="bench")
    started = time.perf_counter()
    for events in prepared[1:]:
        ingest_events(events, dispatcher=dispatch_pipeline, door="bench")
    return batches * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--idle", type=int, default=500)
    args = parser.parse_args()
    with bench_environment() as env:
        from app.services.auth import create_token

        token = create_token("bench-edge", 3600)
        ceiling = ingest_ceiling(args.batch_size, 6)
        port = free_port()
        log = open(Path(env["DATA_DIR"]) / "web.log", "w")
        web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "python:api.gunicorn_conf", "api.wsgi:app"],
            env={**os.environ, "API_HOST": "127.0.0.1", "API_PORT": str(port), "WEB_CONCURRENCY": "1",
                 "WS_IDLE_TIMEOUT_SECS": "600"},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            url = f"ws://127.0.0.1:{port}/ws/events"
            headers = {"Authorization": f"Bearer {token}"}
            print(f"worker class: {os.environ.get('WEB_WORKER_CLASS', 'gevent (default)')}")
            print(f"ingest service alone (in-process ingest_events, same batches): {ceiling:8.0f} events/s")
            with connect(url, additional_headers=headers, max_size=None) as ws:
                ws.recv()
                started = time.perf_counter()
                beats = 0
                while time.perf_counter() - started < 3:
                    ws.send('{"type": "heartbeat"}')
                    ws.recv()
                    beats += 1
                print(f"baseline heartbeat round trips: {beats / (time.perf_counter() - started):8.0f} /s")
                n = 0
                payloads = []
                for b in range(args.batches + 2):
                    events = [edge_event(n + i) for i in range(args.batch_size)]
                    n += args.batch_size
                    payloads.append(json.dumps({"type": "batch", "batch_id": f"b{b}", "compression": "gzip",
                                                "count": len(events),
                                                "events": base64.b64encode(gzip.compress(json.dumps(events).encode()))
                                                .decode()}))
                for payload in payloads[:2]:  # warm-up
                    ws.send(payload)
                    for _ in range(args.batch_size):
                        ws.recv()
                started = time.perf_counter()
                # As the guide's agent does: batches go out without waiting for acks; acks come back.
                sender = threading.Thread(target=lambda: [ws.send(p) for p in payloads[2:]])
                sender.start()
                for _ in range(args.batches * args.batch_size):
                    ack = json.loads(ws.recv())
                    assert ack["type"] == "ack", ack
                sender.join()
                elapsed = time.perf_counter() - started
                total = args.batches * args.batch_size
                print(f"batched ingest, one connection: {total / elapsed:8.0f} events/s "
                      f"({args.batches} batches of {args.batch_size}, every event acked after commit); "
                      f"ratio to the ingest service alone: {total / elapsed / ceiling:.2f}")
            pid = worker_pid(web.pid)
            before, held = asyncio.run(hold_idle(url, args.idle, pid))
            print(f"idle connections: {args.idle}; worker RSS {before / 1024:.1f} MiB -> {held / 1024:.1f} MiB "
                  f"(+{(held - before) / max(args.idle, 1):.0f} KiB per connection)")
        finally:
            os.killpg(web.pid, signal.SIGTERM)
            web.wait(timeout=30)


if __name__ == "__main__":
    main()
