"""Through gunicorn, as the Procfile's `web` runs it (`--config python:api.gunicorn_conf`)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent.parent
SENTINEL_TEXT = (Path(__file__).parent.parent / "fixtures" / "sentinel-event.json").read_text()
SENTINEL = json.loads(SENTINEL_TEXT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gunicorn:
    """`gunicorn --config python:api.gunicorn_conf api.wsgi:app` in its own process group."""

    def __init__(self, env: dict[str, str], port: int | None = None, workers: int = 2, log: Path | None = None,
                 extra_env: dict[str, str] | None = None, inherit: bool = True) -> None:
        self.port = port or free_port()
        self.log_path = log or Path(env["DATA_DIR"]) / f"gunicorn-{self.port}-{time.time_ns()}.log"
        # inherit=False: exactly `env` (the embedded-default test must not see this session's servers)
        self.env = {**(os.environ if inherit else {}), **env, "API_HOST": "127.0.0.1", "API_PORT": str(self.port),
                    "WEB_CONCURRENCY": str(workers), **(extra_env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "python:api.gunicorn_conf", "api.wsgi:app"],
            cwd=ROOT, env=self.env, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> "Gunicorn":
        def up() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"gunicorn exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout, 0.2, "gunicorn to answer /health/ready")
        return self

    def kill(self) -> None:
        """SIGKILL the master and every worker (the whole process group)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def gunicorn(test_env, db):  # type: ignore[no-untyped-def]
    servers: list[Gunicorn] = []

    def start(**kwargs) -> Gunicorn:  # type: ignore[no-untyped-def]
        server = Gunicorn(test_env, **kwargs)
        servers.append(server)
        return server.wait_ready()

    yield start
    for server in servers:
        server.stop()


def test_sentinel_event_and_get_through_gunicorn(gunicorn, make_key):
    server = gunicorn()
    key = make_key("event:create", "incident:read")
    response = httpx.post(f"{server.url}/api/v1/events/sentinel", content=SENTINEL_TEXT,
                          headers={"Content-Type": "application/json", "X-API-Key": key}, timeout=30)
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "accepted" and body["event_id"] == "sent-2025-001234"
    assert body["links"]["api"] == f"{server.url}/api/v1/incidents/{body['incident_id']}"
    got = httpx.get(body["links"]["api"], headers={"X-API-Key": key}, timeout=30)
    assert got.status_code == 200 and got.json()["id"] == body["incident_id"]
    again = httpx.post(f"{server.url}/api/v1/events/sentinel", content=SENTINEL_TEXT,
                       headers={"Content-Type": "application/json", "X-API-Key": key}, timeout=30)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert again.json()["incident_id"] == body["incident_id"]
    # a rejected request through the real server: the error shape, and a chunked body over the limit
    bad = httpx.post(f"{server.url}/api/v1/events/sentinel", content=b"{", timeout=30,
                     headers={"Content-Type": "application/json", "X-API-Key": key})
    assert bad.status_code == 400 and set(bad.json()["error"]) == {"code", "message", "details"}

    def chunks():  # no Content-Length: the limit must hold while streaming
        for _ in range(11):
            yield b" " * (1024 * 1024)

    big = httpx.post(f"{server.url}/api/v1/events/sentinel", content=chunks(), timeout=60,
                     headers={"Content-Type": "application/json", "X-API-Key": key})
    assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large", big.text[:300]


def test_rate_limit_is_shared_by_the_gunicorn_workers(gunicorn, make_key):
    server = gunicorn(workers=2)
    key = make_key("event:create", rate_limit=6, burst=4)
    statuses = []
    for i in range(10):
        with httpx.Client(timeout=30) as client:  # a new connection each time: both workers serve
            response = client.post(f"{server.url}/api/v1/events/sentinel", json=dict(SENTINEL, event_id=f"g-{i}"),
                                   headers={"X-API-Key": key})
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["Retry-After"]) >= 1
    assert statuses.count(202) == 4 and statuses.count(429) == 6


def test_metrics_under_gunicorn_include_the_workers_counts(gunicorn, make_key, worker):
    server = gunicorn()
    key = make_key("admin")
    for i in range(2):
        assert httpx.post(f"{server.url}/api/v1/events/sentinel", json=dict(SENTINEL, event_id=f"gm-{i}"),
                          headers={"X-API-Key": key}, timeout=30).status_code == 202

    def scraped() -> str | None:
        text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30).text
        processed = re.search(r"^incident_manager_alerts_processed_total (\S+)$", text, re.M)
        return text if processed and float(processed.group(1)) >= 2 else None

    text = wait_for(scraped, 30, 0.3, "the Celery worker's count in gunicorn's /metrics")
    accepted = re.search(r'^incident_manager_events_ingested_total\{door="rest",status="accepted"\} (\S+)$', text, re.M)
    assert accepted and float(accepted.group(1)) >= 2  # counted in a gunicorn worker
    assert re.search(r"^incident_manager_incidents_created_total \S+$", text, re.M)


def test_invalid_configuration_stops_gunicorn_naming_the_key(test_env, tmp_path):
    server = Gunicorn(test_env, extra_env={"ENABLE_ML_CLASSIFICATION": "sometimes"}, log=tmp_path / "g.log")
    try:
        assert server.process.wait(60) != 0
    finally:
        server.kill()
    assert "ENABLE_ML_CLASSIFICATION" in (tmp_path / "g.log").read_text()
