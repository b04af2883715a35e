"""Operating the system: Flower as the Procfile starts it (basic auth, its HTTP API showing the
workers and the pipeline's, escalation's and playbooks' tasks by name and queue), and RabbitMQ as the broker
(the pipeline end to end through gunicorn and a worker on `amqp://`, /health reading its queues)."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from kombu import Connection, Exchange, Queue

from tasks.queues import QUEUES
from tests.conftest import wait_for
from tests.integration.test_gunicorn import Gunicorn, free_port

ROOT = Path(__file__).resolve().parent.parent.parent
SENTINEL = json.loads((ROOT / "tests" / "fixtures" / "sentinel-event.json").read_text())
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")


def _procfile(name: str) -> str:
    line = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith(f"{name}:"))
    return line.split(":", 1)[1].strip()


class Flower:
    """The Procfile's `flower` line, run by a shell as a Procfile runner would."""

    def __init__(self, env: dict[str, str], credentials: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(env["DATA_DIR"]) / f"flower-{self.port}.log"
        self.process = subprocess.Popen(
            ["sh", "-c", _procfile("flower")], cwd=ROOT, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT,
            env={**os.environ, **env, "FLOWER_PORT": str(self.port), "FLOWER_BASIC_AUTH": credentials,
                 "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])},
            start_new_session=True)

    def get(self, path: str, auth: tuple[str, str] | None) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", auth=auth, timeout=10)

    def wait_ready(self, auth: tuple[str, str]) -> "Flower":
        def up() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"flower exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                return self.get("/healthcheck", auth).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, 0.3, "Flower to answer")
        return self

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(timeout=10)


@pytest.fixture
def flower(test_env: dict[str, str]) -> Iterator[tuple[Flower, tuple[str, str]]]:
    auth = ("ops", secrets.token_urlsafe(12))
    started = Flower(test_env, f"{auth[0]}:{auth[1]}")
    try:
        yield started.wait_ready(auth), auth
    finally:
        started.stop()


def test_flower_lists_the_workers_and_the_pipeline_escalation_and_playbook_tasks_behind_basic_auth(
        flower: tuple[Flower, tuple[str, str]], client: Any, make_key: Any, start_worker: Any) -> None:
    server, auth = flower
    worker = start_worker()
    key = make_key("admin")
    accepted = client.post("/api/v1/events/sentinel", json=dict(SENTINEL, event_id=f"flower-{uuid.uuid4().hex[:8]}"),
                           headers={"X-API-Key": key})
    assert accepted.status_code == 202
    from tasks.celery_app import app as celery

    celery.send_task("escalation.sweep")  # what beat sends every few seconds
    # a playbook run by hand (an engineer's manual trigger): its step runs as `playbooks.advance`
    playbook = {"name": "flower-probe", "steps": [{"type": "assign", "params": {"assignee": "oncall-bot"}}]}
    assert client.post("/api/v1/playbooks", json=playbook, headers={"X-API-Key": key}).status_code == 201
    run = client.post(f"/api/v1/incidents/{accepted.get_json()['incident_id']}/playbooks/flower-probe/run",
                      headers={"X-API-Key": key})
    assert run.status_code in (200, 201, 202), run.get_json()

    def workers() -> dict[str, Any] | None:
        response = server.get("/api/workers?refresh=1", auth)
        assert response.status_code == 200, response.text
        body = response.json()
        return body if any(name.startswith(worker.name) for name in body) else None

    listed = wait_for(workers, 60, 1.0, "Flower's /api/workers to list the test worker")
    info = next(value for name, value in listed.items() if name.startswith(worker.name))
    assert {q["name"] for q in info["active_queues"]} == set(QUEUES)

    def tasks() -> dict[str, dict[str, Any]] | None:
        response = server.get("/api/tasks", auth)
        assert response.status_code == 200, response.text
        by_name: dict[str, dict[str, Any]] = {}
        for task in response.json().values():
            if task.get("state") == "SUCCESS":
                by_name.setdefault(task["name"], task)
        return by_name if {"pipeline.batch", "escalation.sweep", "playbooks.advance"} <= set(by_name) else None

    done = wait_for(tasks, 60, 1.0, "Flower's /api/tasks to show the pipeline's last stage, the sweep and the "
                                    "playbook step succeeded")
    assert {"pipeline.drain", "pipeline.batch"} <= set(done), sorted(done)
    # one task runs a batch's five stages; its result names each with its time, as ops watch them
    for stage in ("dedup", "classify", "enrich", "correlate", "route"):
        assert f"'{stage}'" in str(done["pipeline.batch"].get("result")), done["pipeline.batch"]
    for name, task in done.items():  # each task on the queue its name promises (celeryconfig task_routes)
        expected = "escalation" if name.startswith(("escalation.", "sla.")) else name.split(".", 1)[0]
        if task.get("routing_key") is not None:
            assert task["routing_key"] == expected, (name, task["routing_key"])
    assert done["escalation.sweep"]["routing_key"] == "escalation"
    assert done["playbooks.advance"]["routing_key"] == "playbooks"
    assert done["pipeline.drain"]["worker"].startswith(worker.name)

    # no credential, a wrong one: refused, for the UI and the API alike
    for path in ("/api/workers", "/api/tasks", "/"):
        assert server.get(path, None).status_code == 401
        assert server.get(path, (auth[0], "wrong")).status_code == 401
    assert auth[1] not in server.log_path.read_text()  # the password is in no log line


# ------------------------------------------------------------------------------------------ RabbitMQ

def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"rabbitmqctl {shlex.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def rabbitmq_vhost() -> Iterator[str]:
    """A vhost of this test session on the machine's RabbitMQ (parallel sessions never share queues);
    deleted afterwards. `.ci/run` starts RabbitMQ when it is down."""
    vhost = f"im-test-{os.getpid()}-{secrets.token_hex(3)}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"{RABBITMQ_URL}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


def test_the_pipeline_runs_end_to_end_on_rabbitmq(rabbitmq_vhost: str, test_env: dict[str, str], db: None,
                                                   make_key: Any) -> None:
    from celery import Celery

    env = {**test_env, "CELERY_BROKER_URL": rabbitmq_vhost}
    worker_env = {**os.environ, **env, "LOG_LEVEL": "INFO"}  # its "ready." line says when it consumes
    name = f"amqp-{uuid.uuid4().hex[:6]}"
    # every queue but `playbooks`: a message sent there waits, and /health must count it
    queues = ",".join(q for q in QUEUES if q != "playbooks")
    log_path = Path(test_env["DATA_DIR"]) / f"{name}.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks.celery_app", "worker", "-Q", queues, "--concurrency", "2",
         "-n", f"{name}@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=worker_env, stdout=log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    web = Gunicorn(env, workers=1)
    # this test's own client of the vhost (the session's CELERY_BROKER_URL, Redis, would win over a
    # Celery(broker=...) argument: the connection is given explicitly)
    amqp, connection = Celery(), Connection(rabbitmq_vhost)
    try:
        def worker_up() -> bool:
            if worker.poll() is not None:
                pytest.fail(f"worker exited:\n{log_path.read_text()[-3000:]}")
            return f'"{name}@' in log_path.read_text() and " ready." in log_path.read_text()

        wait_for(worker_up, 60, 0.3, "the RabbitMQ worker to say it is ready")
        web.wait_ready()
        key = make_key("admin")
        headers = {"X-API-Key": key}
        response = httpx.post(f"{web.url}/api/v1/events/sentinel", json=dict(SENTINEL, event_id="amqp-1"),
                              headers=headers, timeout=30)
        assert response.status_code == 202, response.text
        incident_id = response.json()["incident_id"]

        def processed() -> dict[str, Any] | None:
            body = httpx.get(f"{web.url}/api/v1/incidents/{incident_id}", headers=headers, timeout=10).json()
            return body if body.get("processed_at") else None

        incident = wait_for(processed, 60, 0.3, "the pipeline to process the event over RabbitMQ")
        assert incident["category"] and incident["severity"] in ("P0", "P1", "P2", "P3", "P4")
        # the stages ran as messages of this vhost (the session's Redis broker saw none of them)
        listed = _rabbitmqctl("list_queues", "-p", rabbitmq_vhost.rsplit("/", 1)[1], "name", "messages")
        assert "pipeline" in listed.split()

        # nobody consumes `playbooks` here
        Queue("playbooks", Exchange("playbooks", type="direct"), routing_key="playbooks")(connection).declare()
        amqp.send_task("ops.health_probe", queue="playbooks", routing_key="playbooks", connection=connection)
        sent_at = time.monotonic()

        def health() -> dict[str, Any] | None:
            body = httpx.get(f"{web.url}/health", timeout=30).json()  # no credential: the README's curl
            return body if body["queues"].get("playbooks", {}).get("depth") == 1 else None

        body = wait_for(health, 30, 0.5, "/health to count the waiting playbooks message")
        assert time.monotonic() - sent_at < 60
        assert body["checks"]["broker"]["status"] == "up" and body["checks"]["broker"]["transport"] == "amqp"
        assert set(body["queues"]) == set(QUEUES)
        assert body["queues"]["playbooks"]["oldest_age_seconds"] is None  # RabbitMQ keeps no age we can read
        assert body["queues"]["pipeline"]["depth"] == 0
        assert "guest:guest" not in json.dumps(body)
    finally:
        web.stop()
        if worker.poll() is None:
            os.killpg(worker.pid, 15)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, 9)
                worker.wait(timeout=10)
        connection.release()
        amqp.close()
