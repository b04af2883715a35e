"""Alertmanager compatibility: the real `prometheus-alertmanager` binary (Debian package) with a
webhook receiver pointing at our real web process: an alert fires, then resolves."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from sqlalchemy import select

from app.adapters.db import read_session
from app.adapters.models import Event, Incident
from tests.conftest import wait_for
from tests.integration.test_ws import free_port, running_web

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager") or "prometheus-alertmanager"


@pytest.fixture(scope="module")
def web(test_env: dict[str, str]) -> Iterator[str]:
    with running_web() as base:
        yield base


@pytest.fixture
def alertmanager(web: str, make_key, tmp_path: Path) -> Iterator[str]:
    key = make_key("event:create")
    port = free_port()
    config = tmp_path / "alertmanager.yml"
    config.write_text(f"""
global:
  resolve_timeout: 1m
route:
  receiver: incident-manager
  group_by: ['alertname']
  group_wait: 100ms
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: incident-manager
    webhook_configs:
      - url: {web}/api/v1/integrations/alertmanager
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials: {key}
""")
    log_path = tmp_path / "alertmanager.log"
    process = subprocess.Popen(
        [ALERTMANAGER, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=debug"],
        stdout=log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"alertmanager exited:\n{log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"{base}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 30, 0.1, "alertmanager to be ready")
    try:
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def _post_alert(base: str, ends_at: datetime | None = None, starts_at: datetime | None = None) -> None:
    alert = {
        "labels": {"alertname": "HighInferenceLatency", "severity": "critical", "service": "chat-api",
                   "instance": "gpu-node-7:9100", "env": "prod"},
        "annotations": {"summary": "p95 latency above 5s", "description": "chat-api p95 is 5.4s for 5 minutes"},
        "generatorURL": "http://prometheus.local/graph",
    }
    if starts_at:
        alert["startsAt"] = starts_at.isoformat().replace("+00:00", "Z")
    if ends_at:
        alert["endsAt"] = ends_at.isoformat().replace("+00:00", "Z")
    response = httpx.post(f"{base}/api/v2/alerts", json=[alert], timeout=5)
    assert response.status_code == 200, response.text


def _incidents() -> list[Incident]:
    with read_session() as session:
        return list(session.scalars(select(Incident)))


def test_firing_then_resolved(alertmanager):
    started = datetime.now(timezone.utc) - timedelta(seconds=30)
    _post_alert(alertmanager, starts_at=started)
    [incident] = wait_for(_incidents, 20, 0.1, "the firing alert to open an incident")
    assert incident.source == "alertmanager"
    # The summary annotation is the title; the alertname stays in the tags.
    assert (incident.title, incident.severity, incident.service) == ("p95 latency above 5s", "P0", "chat-api")
    assert incident.tags["alertname"] == "HighInferenceLatency"
    assert incident.tags["env"] == "prod" and incident.description == "chat-api p95 is 5.4s for 5 minutes"
    assert incident.status == "NEW"
    with read_session() as session:
        event = session.scalars(select(Event)).one()
    assert event.payload["labels"]["alertname"] == "HighInferenceLatency"  # the alert as Alertmanager sent it
    assert event.payload["fingerprint"]

    _post_alert(alertmanager, starts_at=started, ends_at=datetime.now(timezone.utc) - timedelta(seconds=1))

    def resolved() -> bool:
        [current] = _incidents()
        return current.status == "RESOLVED"

    wait_for(resolved, 20, 0.1, "the resolved alert to resolve the incident")
    [incident] = _incidents()
    assert incident.resolved_by == "alertmanager" and incident.resolution_method == "Automatic"
    with read_session() as session:
        assert len(list(session.scalars(select(Event)))) == 1  # repeats were duplicates, nothing new


def test_direct_webhook_errors_write_nothing(web, make_key):
    key = make_key("event:create")
    url = f"{web}/api/v1/integrations/alertmanager"
    good = {"version": "4", "status": "firing", "receiver": "im", "groupLabels": {}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://am", "groupKey": "{}", "alerts": [{
                "status": "firing", "labels": {"alertname": "DiskFull", "severity": "warning"}, "annotations": {},
                "startsAt": "2025-11-11T10:30:00Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "ff00"}]}
    cases = [
        (dict(content=b"{oops", headers={"X-API-Key": key, "Content-Type": "application/json"}), 400),
        (dict(json={**good, "version": "3"}, headers={"X-API-Key": key}), 422),
        (dict(json={**good, "alerts": [{"status": "firing", "labels": {}}]}, headers={"X-API-Key": key}), 422),
        (dict(json=good), 401),
        (dict(json=good, headers={"Authorization": "Bearer im_00000000_nopenopenopenopenopenope"}), 401),
        (dict(json=good, headers={"X-API-Key": make_key("incident:read")}), 403),
        (dict(content=b"x", headers={"X-API-Key": key, "Content-Type": "text/plain"}), 415),
    ]
    for kwargs, status in cases:
        response = httpx.post(url, timeout=5, **kwargs)
        assert response.status_code == status, (kwargs, response.text)
        assert set(response.json()["error"]) == {"code", "message", "details"}
    assert _incidents() == []
    response = httpx.post(url, json=good, headers={"Authorization": f"Bearer {key}"}, timeout=5)
    assert response.status_code == 202
    [result] = response.json()["results"]
    assert result["status"] == "accepted" and result["incident_id"].startswith("INC-")
    [incident] = _incidents()
    assert incident.severity == "P2"
    assert incident.title == "DiskFull" and result["alert"] == "DiskFull"  # no summary: the alertname
    assert json.loads(json.dumps(response.json()))["status"] == "accepted"
