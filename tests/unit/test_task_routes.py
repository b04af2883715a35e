"""Every Celery task goes to a named queue by an explicit route, never to the default queue by
accident (as Grafana OnCall's test_task_queue_assignment); every route serves a task; the queues
are one list, which the Procfile's worker, the README and the test harness consume."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tasks.queues import QUEUES
from tests.conftest import ALL_QUEUES

ROOT = Path(__file__).resolve().parents[2]

# In a child process: the Celery app reads its settings at import (embedded default under a fresh
# DATA_DIR), and this session's own settings stay untouched.
_PROBE = """
import json
from celery.app.routes import MapRoute
from tasks.celery_app import app
app.loader.import_default_modules()
routes = MapRoute(app.conf.task_routes)
tasks = sorted(name for name in app.tasks if not name.startswith("celery."))
print(json.dumps({
    "routes": {name: (routes(name) or {}).get("queue") for name in tasks},
    "patterns": sorted(str(p) for p in app.conf.task_routes),
    "declared": [q.name for q in app.conf.task_queues],
    "default": app.conf.task_default_queue,
}))
"""


def _probe(tmp_path: Path) -> dict:
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_task_has_an_explicit_route_to_a_declared_queue(tmp_path):
    found = _probe(tmp_path)
    assert len(found["routes"]) >= 10, found["routes"]  # the probe saw the task modules
    unrouted = sorted(name for name, queue in found["routes"].items() if queue is None)
    assert not unrouted, f"tasks without an explicit route in celeryconfig.task_routes: {unrouted}"
    undeclared = {name: queue for name, queue in found["routes"].items() if queue not in QUEUES}
    assert not undeclared, f"tasks routed to a queue not in tasks.queues.QUEUES: {undeclared}"
    assert found["declared"] == list(QUEUES)
    assert found["default"] in QUEUES


def test_every_route_serves_a_task(tmp_path):
    found = _probe(tmp_path)
    dead = [pattern for pattern in found["patterns"]
            if not any(re.fullmatch(pattern.replace(".", r"\.").replace("*", ".*"), name) for name in found["routes"])]
    assert not dead, f"routes for tasks that do not exist: {dead}"


def test_procfile_readme_and_harness_consume_the_one_queue_list():
    worker = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("worker:"))
    consumed = re.search(r"-Q\s+(\S+)", worker)
    assert consumed and tuple(consumed.group(1).split(",")) == QUEUES, worker
    assert ALL_QUEUES.split(",") == list(QUEUES)
    assert f"`{','.join(QUEUES)}`" in (ROOT / "README.md").read_text()
