"""`incident-manager run` as a newcomer runs it: the embedded default (no DATABASE_URL, no REDIS_URL),
its start-up lines, the guide's Sentinel event processed within a second, Ctrl-C, a restart."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent.parent
SENTINEL = json.loads((ROOT / "tests" / "fixtures" / "sentinel-event.json").read_text())
PROCESSES = ("web", "worker", "beat", "grpc", "flower")
# The first start trains the first model; on a loaded 2-core machine that has taken minutes.
FIRST_START_SECS = 600


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Run:
    """One `incident-manager run` (the console script), its output collected line by line."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.api_port, grpc_port, self.flower_port = _free_port(), _free_port(), _free_port()
        env = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "PROMETHEUS_MULTIPROC_DIR",
                            "API_KEY_SECRET", "JWT_SECRET", "CONFIG_FILE", "IM_EXTRA_TASK_MODULES", "LOG_LEVEL",
                            "FLOWER_BASIC_AUTH", "METRICS_REQUIRE_KEY")}
        env.update(DATA_DIR=str(data_dir), API_PORT=str(self.api_port), GRPC_PORT=str(grpc_port),
                   FLOWER_PORT=str(self.flower_port))
        self.lines: list[str] = []
        self.process = subprocess.Popen([str(Path(sys.executable).parent / "incident-manager"), "run"], cwd=ROOT,
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def line(self, pattern: str) -> str | None:
        return next((line for line in list(self.lines) if re.search(pattern, line)), None)

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"run exited with {self.process.returncode}:\n" + "\n".join(self.lines[-80:]))
            return self.line(r"^run +\| ready in ") is not None
        wait_for(ready, timeout, 0.2, "`incident-manager run` to say it is ready")

    def started_pids(self) -> list[int]:
        return [int(m.group(1)) for line in list(self.lines) if (m := re.search(r"started \(pid (\d+)\)", line))]

    def interrupt(self) -> tuple[int, float]:
        """Ctrl-C: SIGINT to the supervisor; (exit status, seconds until it exited)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGINT)
        returncode = self.process.wait(30)
        seconds = time.monotonic() - started
        self._reader.join(5)
        return returncode, seconds

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for pid in self.started_pids():
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One DATA_DIR for the module: the second test restarts on the first one's data."""
    return tmp_path_factory.mktemp("embedded") / "var"


@pytest.fixture
def run(data_dir: Path) -> Iterator[Run]:
    process = Run(data_dir)
    yield process
    process.kill()


def _stopped_cleanly(run: Run) -> None:
    returncode, seconds = run.interrupt()
    summary = [line for line in run.lines if re.match(r"^run +\| stopped ", line)]
    assert returncode == 0, "\n".join(run.lines[-40:])
    assert seconds < 3.0, f"Ctrl-C took {seconds:.2f} s:\n" + "\n".join(run.lines[-40:])
    assert len(summary) == 1 and all(name in summary[0] for name in PROCESSES), summary
    assert not any("rc=-15" in line for line in run.lines)
    assert not [pid for pid in run.started_pids() if _alive(pid)]


@pytest.mark.slow
@pytest.mark.timeout(FIRST_START_SECS + 120)
def test_first_start_processes_the_guides_event_within_a_second_and_stops_on_ctrl_c(run: Run) -> None:
    run.wait_ready(FIRST_START_SECS)
    # a line for each start-up step, then one per process when it is ready
    for step in (r"^database \| migrating sqlite:", r"^database \| at the latest revision",
                 r"^model +\| looking for a trained model", r"^model +\| .*\(\d+\.\d s\)$",
                 r"^key +\| admin API key \(shown once, saved in .*first-api-key\)"):
        assert run.line(step), (step, run.lines[:30])
    for name in PROCESSES:
        assert run.line(rf"^run +\| {name} ready"), name
    # no warning printed twice (kombu's "No hostname" came 20 times), Celery's root warning said once
    assert not run.line("No hostname was supplied")
    assert not run.line("superuser privileges")
    warnings = Counter(re.sub(r"^\S+ +\| (\[W \d+ [\d:]+ )?", "", line) for line in run.lines
                       if '"level": "warning"' in line or "[W " in line or "Warning" in line)
    assert [w for w, n in warnings.items() if n > 1] == []

    key_line = run.line(r"^key +\| admin API key")
    assert key_line is not None
    key = key_line.rsplit(" ", 1)[1]
    assert (run.data_dir / "first-api-key").read_text().strip() == key
    database = run.data_dir / "incident-manager.db"

    def processed() -> bool:
        with sqlite3.connect(database) as conn:
            row = conn.execute("SELECT processed_at FROM events WHERE event_id = ?", (SENTINEL["event_id"],)).fetchone()
        return row is not None and row[0] is not None

    sent = time.monotonic()
    response = httpx.post(f"{run.url}/api/v1/events/sentinel", json=SENTINEL, headers={"X-API-Key": key},
                          timeout=30)
    accepted = time.monotonic()
    assert response.status_code == 202, response.text
    wait_for(processed, 10, 0.01, "the pipeline to process the event")
    took = time.monotonic() - sent
    assert took < 1.0, (f"event to processed incident took {took:.2f} s "
                        f"(the answer {accepted - sent:.2f} s, the pipeline {took - (accepted - sent):.2f} s)")

    # Flower out of the box: the login `run` printed opens its UI and HTTP API, nothing else does
    login = run.line(r"^flower +\| Flower login \(shown once, saved in .*flower-credentials\): user \S+, password \S+$")
    assert login is not None, run.lines[:30]
    user, password = re.findall(r"user (\S+), password (\S+)$", login)[0]
    assert (run.data_dir / "flower-credentials").read_text().strip() == f"{user}:{password}"
    assert oct((run.data_dir / "flower-credentials").stat().st_mode & 0o777) == "0o600"
    flower = f"http://127.0.0.1:{run.flower_port}"
    assert httpx.get(f"{flower}/api/workers", timeout=30).status_code == 401
    workers = wait_for(lambda: httpx.get(f"{flower}/api/workers?refresh=1", auth=(user, password), timeout=30).json(),
                       60, 1.0, "Flower to list the worker")
    assert any(name.startswith("worker@") for name in workers)

    # /health (no credential: the reference README's curl) and /metrics show every queue of the
    # embedded broker, with depth and oldest age
    body = httpx.get(f"{run.url}/health", timeout=10).json()
    assert body["checks"]["broker"] == {"status": "up", "transport": "filesystem"}
    assert set(body["queues"]) == {"ingest", "pipeline", "notifications", "escalation", "playbooks", "ml"}
    assert all(set(q) == {"depth", "oldest_age_seconds"} for q in body["queues"].values())
    metrics = httpx.get(f"{run.url}/metrics", timeout=10).text
    assert re.search(r'^incident_manager_queue_depth\{queue="pipeline"\} \d', metrics, re.M)
    assert re.search(r'^incident_manager_queue_oldest_age_seconds\{queue="pipeline"\} \d', metrics, re.M)
    # our gunicorn's control socket is ours, not the one every gunicorn of this user shares
    assert (run.data_dir / "gunicorn.ctl").exists() or len(str(run.data_dir / "gunicorn.ctl")) > 100

    _stopped_cleanly(run)


@pytest.mark.slow
@pytest.mark.timeout(FIRST_START_SECS + 120)
def test_restart_says_where_the_first_key_is_and_stops_on_ctrl_c(run: Run) -> None:
    first_key = (run.data_dir / "first-api-key").read_text().strip()  # written by the first start
    run.wait_ready(FIRST_START_SECS)
    key_line = run.line(r"^key +\| ")
    assert key_line is not None and key_line.endswith("the first admin API key is in "
                                                      f"{run.data_dir / 'first-api-key'}"), key_line
    assert not run.line("apikey list")
    flower_line = run.line(r"^flower +\| ")
    assert flower_line is not None and flower_line.endswith(
        f"Flower's login (user:password) is in {run.data_dir / 'flower-credentials'}"), flower_line
    response = httpx.get(f"{run.url}/api/v1/incidents", headers={"X-API-Key": first_key}, timeout=10)
    assert response.status_code == 200 and response.json()["items"]
    _stopped_cleanly(run)
