"""A worker SIGKILLed in the middle of a playbook step: after the step's lease runs out, beat's
sweep sends the run again, the interrupted step runs again (with the same Idempotency-Key), and
the steps completed before it are never repeated (a loopback server counts every call)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from app.services import playbooks
from tasks.queue import celery_task_queue
from tests.conftest import wait_for


@pytest.mark.slow
def test_a_worker_killed_mid_run_resumes_without_repeating_completed_steps(
        outbound_config, httpserver: HTTPServer, start_worker, client, make_key, monkeypatch):
    outbound_config({"notifications": {"http": {"allow_private": ["127.0.0.1/32"], "max_attempts": 1}}})
    monkeypatch.setenv("PLAYBOOK_SWEEP_SECS", "0.5")
    monkeypatch.setenv("PLAYBOOK_LEASE_GRACE_SECS", "1")
    base = f"http://127.0.0.1:{httpserver.port}"
    arrived, release = threading.Event(), threading.Event()
    slow_keys: list[str] = []

    def slow(request: Request) -> Response:
        slow_keys.append(request.headers["Idempotency-Key"])
        if len(slow_keys) == 1:
            arrived.set()
            release.wait(60)  # hold the first call open while its worker dies
        return Response("", status=204)

    httpserver.expect_request("/first").respond_with_data("", status=204)
    httpserver.expect_request("/slow").respond_with_handler(slow)
    httpserver.expect_request("/third").respond_with_data("", status=204)
    headers = {"X-API-Key": make_key("incident:write", "incident:read")}
    assert client.post("/api/v1/playbooks", headers=headers, json={"name": "three-calls", "steps": [
        {"name": "first", "type": "http_request", "params": {"url": f"{base}/first"}},
        {"name": "slow", "type": "http_request", "timeout_secs": 3, "params": {"url": f"{base}/slow"}},
        {"name": "third", "type": "http_request", "params": {"url": f"{base}/third"}}]}).status_code == 201
    incident_id = client.post("/api/v1/incidents", headers=headers, json={
        "title": "Checkout errors", "severity": "P2", "source": "monitoring"}).get_json()["id"]

    first = start_worker(queues="playbooks", concurrency=1, beat=True)
    run = playbooks.start_run(incident_id, "three-calls", "tester", celery_task_queue())
    assert arrived.wait(60), "the worker never reached the slow step"
    first.kill()
    release.set()
    assert playbooks.get_run(run["id"])["steps"][1]["status"] == "running"  # nothing recorded for the killed attempt
    start_worker(queues="playbooks", concurrency=1, beat=True)

    def done() -> Any:
        current = playbooks.get_run(run["id"])
        return current if current["status"] == "succeeded" else None

    finished = wait_for(done, timeout=90, message="the run to resume and finish")
    assert [(s["name"], s["status"], s["attempts"]) for s in finished["steps"]] == [
        ("first", "succeeded", 1), ("slow", "succeeded", 2), ("third", "succeeded", 1)]
    calls = [r.path for r, _ in httpserver.log]
    assert calls.count("/first") == 1 and calls.count("/third") == 1  # completed steps never ran twice
    assert slow_keys == [f"playbook-run-{run['id']}-step-1"] * 2  # the receiver can drop the repeat
