"""Playbooks end to end with one real worker (and beat) for the module: the guide's §3 Shield
auto-remediation blocking the user at a loopback remediation server, retries then
`on_failure: continue`, manual runs by REST and by the CLI, the approval gate and cancel, and bad
definitions answered 422 naming the field (REST and the YAML import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from pytest_httpserver import HTTPServer
from werkzeug import Request

from app.config import reset_settings_cache
from tests.conftest import ROOT, WorkerProcess, wait_for

# The integration guide §3 "Incident Manager Configuration", verbatim.
GUIDE_SHIELD_CONFIG = """
integrations:
  llm-shield:
    enabled: true

    # mTLS configuration
    authentication:
      type: mtls
      ca_cert_path: /etc/incident-manager/certs/ca.crt
      verify_client_cert: true

    # Priority routing for security incidents
    routing:
      default_team: security-team
      escalation_policy: security-critical
      auto_page: true  # Auto-page on-call for P0/P1

    # Auto-remediation
    auto_remediation:
      enabled: true
      actions:
        - type: block_user
          conditions:
            severity: [P0]
            event_type: [prompt_injection, data_leakage]
        - type: rate_limit
          conditions:
            severity: [P1]
            event_type: [policy_violation]
"""

# The guide §3 Shield event (its Go example), as JSON.
SHIELD_EVENT = {
    "event_id": "shield-2025-005678", "source": "llm-shield", "source_version": "2.1.0",
    "timestamp": "2025-11-11T10:35:00Z", "event_type": "violation", "category": "security",
    "title": "Prompt Injection Detected", "description": "Malicious prompt injection attempt blocked",
    "severity": "critical",
    "resource": {"type": "model", "id": "model-gpt4-prod", "name": "GPT-4 Production",
                 "metadata": {"model_version": "gpt-4-0613", "deployment_id": "dep-12345"}},
    "metrics": {"confidence_score": 0.95, "attack_vectors": 3},
    "tags": {"environment": "production", "user_id": "user-789", "session_id": "sess-abc123"},
}


@pytest.fixture(scope="module")
def playbook_worker(test_env: dict[str, str], make_httpserver: HTTPServer,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """config.yaml = the guide's Shield block + loopback allowed; Shield's remediation endpoint on the
    loopback server; one worker with beat on every queue for the module."""
    tree = yaml.safe_load(GUIDE_SHIELD_CONFIG)
    tree["notifications"] = {"http": {"allow_private": ["127.0.0.1/32"], "max_attempts": 1}}
    path = tmp_path_factory.mktemp("playbooks") / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    base = f"http://127.0.0.1:{make_httpserver.port}"
    env = {"CONFIG_FILE": str(path), "SHIELD_REMEDIATION_URL": f"{base}/shield", "PLAYBOOK_SWEEP_SECS": "0.5",
           "PLAYBOOK_LEASE_GRACE_SECS": "2"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    reset_settings_cache()
    worker = WorkerProcess({**test_env, **env}, beat=True, name=f"playbooks-{os.getpid()}").wait_ready()
    yield base
    worker.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    reset_settings_cache()


@pytest.fixture
def setup(playbook_worker: str, db: None, client: Any, make_key: Any) -> dict[str, Any]:
    return {"base": playbook_worker, "write": {"X-API-Key": make_key("incident:write", "incident:read")},
            "read": {"X-API-Key": make_key("incident:read")}, "event": {"X-API-Key": make_key("event:create")}}


def hits(server: HTTPServer, path: str) -> list[Request]:
    return [r for r, _ in server.log if r.path == path]


def new_incident(client: Any, headers: dict[str, str], title: str = "Checkout errors") -> str:
    response = client.post("/api/v1/incidents", headers=headers,
                           json={"title": title, "severity": "P2", "source": "monitoring"})
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


def finished(client: Any, headers: dict[str, str], run_id: int, status: str = "succeeded") -> dict[str, Any]:
    def done() -> Any:
        run = client.get(f"/api/v1/playbook-runs/{run_id}", headers=headers).get_json()
        return run if run["status"] in ("succeeded", "failed", "cancelled", "awaiting_approval") else None

    run = wait_for(done, timeout=60, message=f"run {run_id} to finish")
    assert run["status"] == status, run
    return run


def create(client: Any, headers: dict[str, str], playbook: dict[str, Any]) -> None:
    response = client.post("/api/v1/playbooks", headers=headers, json=playbook)
    assert response.status_code == 201, response.get_json()


def test_the_guides_shield_prompt_injection_at_p0_blocks_the_user(setup, client, httpserver: HTTPServer):
    httpserver.expect_request("/shield/block_user", method="POST").respond_with_json({"blocked": True})
    response = client.post("/api/v1/events", json=SHIELD_EVENT, headers=setup["event"])
    assert response.status_code == 202, response.get_json()
    incident_id = response.get_json()["incident_id"]

    def runs() -> Any:
        items = client.get(f"/api/v1/incidents/{incident_id}/playbook-runs", headers=setup["read"]).get_json()["items"]
        return items if items and items[0]["status"] == "succeeded" else None

    [run] = wait_for(runs, timeout=60, message="the auto-remediation run to finish")
    assert run["playbook"] == "llm-shield.block_user" and run["trigger"] == "auto" and run["actor"] == "pipeline"
    [request] = hits(httpserver, "/shield/block_user")
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Idempotency-Key"] == f"playbook-run-{run['id']}-step-0"
    assert json.loads(request.get_data()) == {
        "action": "block_user", "user_id": "user-789", "tenant_id": None, "incident_id": incident_id,
        "event_id": "shield-2025-005678", "source": "llm-shield", "severity": "P0",
        "reason": "Prompt Injection Detected", "duration_secs": None, "playbook": "llm-shield.block_user",
        "run_id": run["id"]}
    [step] = run["steps"]
    assert step["status"] == "succeeded" and step["attempts"] == 1 and step["output"]["response"] == {"blocked": True}
    assert hits(httpserver, "/shield/rate_limit") == []  # P1 policy violations only
    timeline = client.get(f"/api/v1/incidents/{incident_id}/timeline", headers=setup["read"]).get_json()["items"]
    kinds = [e["kind"] for e in timeline if e["field"] == "playbook"]
    assert kinds == ["playbook_started", "playbook_step_succeeded", "playbook_finished"]


def test_a_failing_step_is_retried_then_the_run_continues(setup, client, httpserver: HTTPServer):
    httpserver.expect_request("/flaky").respond_with_data("down", status=503)
    httpserver.expect_request("/after").respond_with_json({"ok": True})
    create(client, setup["write"], {"name": "flaky-then-on", "steps": [
        {"name": "flaky", "type": "http_request", "retries": 2, "retry_delay_secs": 0.2, "on_failure": "continue",
         "timeout_secs": 5, "params": {"url": setup["base"] + "/flaky", "body": '{"incident": "{{ incident.id }}"}'}},
        {"name": "after", "type": "http_request", "params": {"url": setup["base"] + "/after", "method": "PUT"}}]})
    incident_id = new_incident(client, setup["write"])
    response = client.post(f"/api/v1/incidents/{incident_id}/playbooks/flaky-then-on/run", headers=setup["write"])
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["status"] == "queued" and response.get_json()["trigger"] == "manual"
    run = finished(client, setup["read"], response.get_json()["id"])
    flaky, after = run["steps"]
    assert (flaky["status"], flaky["attempts"]) == ("failed", 3) and "503" in flaky["error"]
    assert (after["status"], after["attempts"]) == ("succeeded", 1) and after["output"]["body"] == {"ok": True}
    assert [json.loads(r.get_data()) for r in hits(httpserver, "/flaky")] == [{"incident": incident_id}] * 3
    assert len(hits(httpserver, "/after")) == 1
    metrics = client.get("/metrics", headers=setup["read"]).get_data(as_text=True)
    assert 'incident_manager_playbook_steps_total{outcome="failed",type="http_request"}' in metrics
    assert "incident_manager_playbook_step_duration_seconds_bucket" in metrics


def test_the_approval_gate_and_cancel(setup, client, httpserver: HTTPServer):
    httpserver.expect_request("/drop-cache").respond_with_data("", status=204)
    create(client, setup["write"], {"name": "drop-cache", "steps": [
        {"type": "assign", "params": {"assignee": "oncall-bot"}},
        {"name": "drop", "type": "http_request", "destructive": True,
         "params": {"url": setup["base"] + "/drop-cache", "method": "DELETE"}}]})
    incident_id = new_incident(client, setup["write"])
    run_id = client.post(f"/api/v1/incidents/{incident_id}/playbooks/drop-cache/run",
                         headers=setup["write"]).get_json()["id"]
    run = finished(client, setup["read"], run_id, status="awaiting_approval")
    assert [s["status"] for s in run["steps"]] == ["succeeded", "awaiting_approval"]
    assert hits(httpserver, "/drop-cache") == []
    assert client.get(f"/api/v1/incidents/{incident_id}", headers=setup["read"]).get_json()["assignee"] == "oncall-bot"
    assert client.post(f"/api/v1/playbook-runs/{run_id}/approve", headers=setup["read"]).status_code == 403
    approved = client.post(f"/api/v1/playbook-runs/{run_id}/approve", headers=setup["write"])
    assert approved.status_code == 200 and approved.get_json()["steps"][1]["approved_by"] == "test"
    run = finished(client, setup["read"], run_id)
    assert len(hits(httpserver, "/drop-cache")) == 1
    again = client.post(f"/api/v1/playbook-runs/{run_id}/approve", headers=setup["write"])
    assert again.status_code == 409 and again.get_json()["error"]["details"] == {"status": "succeeded"}
    assert client.post(f"/api/v1/playbook-runs/{run_id}/cancel", headers=setup["write"]).status_code == 409
    # a second run, cancelled at the gate: the destructive step never runs
    second = client.post(f"/api/v1/incidents/{incident_id}/playbooks/drop-cache/run", headers=setup["write"])
    finished(client, setup["read"], second.get_json()["id"], status="awaiting_approval")
    cancelled = client.post(f"/api/v1/playbook-runs/{second.get_json()['id']}/cancel", headers=setup["write"])
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
    assert [s["status"] for s in cancelled.get_json()["steps"]] == ["succeeded", "cancelled"]
    assert len(hits(httpserver, "/drop-cache")) == 1
    assert client.get("/api/v1/playbook-runs/999999", headers=setup["read"]).status_code == 404
    assert client.post(f"/api/v1/incidents/{incident_id}/playbooks/nope/run", headers=setup["write"]).status_code == 404
    assert client.post("/api/v1/incidents/INC-20200101-99999/playbooks/drop-cache/run",
                       headers=setup["write"]).status_code == 404


def test_manual_run_by_the_cli_prints_progress(setup, client, tmp_path: Path):
    playbooks = {"playbooks": [{"name": "triage", "triggers": {"severity": ["P0"], "source": ["never-sends"]},
                                "steps": [{"name": "ack", "type": "set_status", "params": {"status": "ACKNOWLEDGED"}},
                                          {"name": "pause", "type": "wait", "params": {"seconds": 0.5}},
                                          {"name": "owner", "type": "assign", "params": {"team": "sre"}}]}]}
    path = tmp_path / "playbooks.yaml"
    path.write_text(yaml.safe_dump(playbooks))
    env = {**os.environ}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)

    first = cli("config", "import", str(path))
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["created"] == {"playbooks": ["triage"]}
    assert json.loads(cli("config", "import", str(path)).stdout)["unchanged"] == {"playbooks": ["triage"]}
    listed = cli("playbook", "list")
    assert ("triage  [api]  when severity=['P0'], source=['never-sends']: ack(set_status) -> pause(wait)"
            in listed.stdout)
    assert "llm-shield.block_user  [config]" in listed.stdout
    incident_id = new_incident(client, setup["write"])
    result = cli("playbook", "run", "triage", incident_id, "--actor", "alice")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("run ") and lines[0].endswith(f"playbook triage on {incident_id} (3 steps)")
    for step in ("step 1 ack [set_status]: succeeded", "step 2 pause [wait]: succeeded",
                 "step 3 owner [assign]: succeeded"):
        assert f"  {step}" in lines, result.stdout
    assert lines[-1].endswith(": succeeded")
    incident = client.get(f"/api/v1/incidents/{incident_id}", headers=setup["read"]).get_json()
    assert (incident["status"], incident["team"], incident["acknowledged_by"]) == ("ACKNOWLEDGED", "sre",
                                                                                  "playbook:triage")
    missing = cli("playbook", "run", "nope", incident_id)
    assert missing.returncode == 1 and "playbook 'nope' not found" in missing.stderr


def test_bad_definitions_answer_422_naming_the_field(setup, client):
    def refused(body: dict[str, Any]) -> dict[str, Any]:
        response = client.post("/api/v1/playbooks", headers=setup["write"], json=body)
        assert response.status_code == 422, response.get_json()
        return dict(response.get_json()["error"]["details"])

    step = {"type": "wait", "params": {"seconds": 1}}
    assert refused({"name": "x", "steps": [{"type": "shell", "params": {"cmd": "rm -rf /"}}]}) == {
        "steps": {"0": {"type": [f"Must be one of: {', '.join(_types())}."]}}}
    assert refused({"name": "x", "steps": [{"type": "http_request", "params": {"method": "POST"}}]}) == {
        "steps": {"0": {"params": {"url": ["Missing data for required field."]}}}}
    details = refused({"name": "x", "steps": [{"type": "run_task", "params": {"task": "os.system"}}]})
    assert "'os.system' is not an allowed task" in details["steps"]["0"]["params"]["task"][0]
    details = refused({"name": "x", "steps": [{"type": "http_request", "params": {"url": "{{ incident.__class__ }}"}}]})
    assert "access to '__class__' is not allowed" in details["steps"]["0"]["params"]["url"][0]
    assert refused({"name": "x", "triggers": {"severity": ["P9"]}, "steps": [step]}) == {
        "triggers": {"severity": {"0": ["Must be one of: P0, P1, P2, P3, P4."]}}}
    assert refused({"name": "x", "steps": [{**step, "on_failure": "retry"}]}) == {
        "steps": {"0": {"on_failure": ["Must be one of: stop, continue."]}}}
    assert refused({"name": "x", "steps": []}) == {"steps": ["a playbook needs 1 to 50 steps"]}
    assert refused({"name": "x", "steps": [{**step, "name": "w"}, {**step, "name": "w"}]}) == {
        "steps": {"1": {"name": ["'w' is also the name of step 0"]}}}
    create(client, setup["write"], {"name": "ok", "steps": [step]})
    conflict = client.post("/api/v1/playbooks", headers=setup["write"], json={"name": "ok", "steps": [step]})
    assert conflict.status_code == 409
    assert client.get("/api/v1/playbooks/nope", headers=setup["read"]).status_code == 404
    partial = client.patch("/api/v1/playbooks/ok", headers=setup["write"], json={"steps": [{"params": {}}]})
    assert partial.status_code == 422  # a PATCH may leave out fields of the playbook, not of a step
    assert partial.get_json()["error"]["details"] == {"steps": {"0": {"type": ["Missing data for required field."]}}}
    patched = client.patch("/api/v1/playbooks/ok", headers=setup["write"], json={"enabled": False})
    assert patched.status_code == 200 and patched.get_json()["enabled"] is False and patched.get_json()["version"] == 2
    incident_id = new_incident(client, setup["write"])
    assert client.post(f"/api/v1/incidents/{incident_id}/playbooks/ok/run", headers=setup["write"]).status_code == 409
    assert client.delete("/api/v1/playbooks/ok", headers=setup["write"]).status_code == 204

    from app.services import escalation_config

    with pytest.raises(escalation_config.ImportError_) as bad:
        escalation_config.import_yaml("playbooks:\n  - name: y\n    steps:\n      - type: notify\n"
                                      "        params: {channel: email}\n")
    assert bad.value.details == {"playbooks[0]": {"steps": {0: {"params": {"user": [
        "an email goes to a user: name one"]}}}}}


def _types() -> tuple[str, ...]:
    from app.domain.playbook import STEP_TYPES

    return STEP_TYPES
