"""Test harness: real Postgres (a fresh database per session), real Redis (a claimed database
number per session, so several sessions can run side by side), real Celery workers started as
subprocesses. Nothing eager, nothing mocked."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg
import pytest
import redis as redis_lib

from tasks.queues import QUEUES

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://root@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
ALL_QUEUES = ",".join(QUEUES)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _claim_redis_db() -> tuple[int, redis_lib.Redis]:
    """Claim a Redis database number nobody else's test session holds (lock key with TTL)."""
    token = str(os.getpid())
    for number in range(1, 16):
        client = redis_lib.Redis.from_url(f"{REDIS_BASE}/{number}")
        holder = client.get("im:test-session-lock")
        if holder is not None and not _pid_alive(int(holder)):
            client.delete("im:test-session-lock")  # its session died without cleaning up
        if client.set("im:test-session-lock", token, nx=True, ex=3 * 3600):
            client.flushdb()
            client.set("im:test-session-lock", token, ex=3 * 3600)
            return number, client
    raise RuntimeError("no free Redis database (1..15) for this test session")


@pytest.fixture(scope="session")
def test_env() -> Iterator[dict[str, str]]:
    """Environment of this test session: its own Postgres database and Redis db; applied to
    os.environ so the code under test and the workers it starts read the same settings."""
    db_name = f"im_test_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    redis_db, redis_client = _claim_redis_db()
    data_dir = tempfile.mkdtemp(prefix="im-test-")
    metrics_dir = Path(data_dir) / "metrics"
    metrics_dir.mkdir()
    env = {
        "DATABASE_URL": PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{db_name}",
        "REDIS_URL": f"{REDIS_BASE}/{redis_db}",
        "CELERY_BROKER_URL": f"{REDIS_BASE}/{redis_db}",
        "DATA_DIR": data_dir,
        "API_KEY_SECRET": secrets.token_urlsafe(32),
        "JWT_SECRET": secrets.token_urlsafe(48),
        "LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "OUTBOX_RELAY_AFTER_SECS": "5",
        "TASK_MAX_RETRIES": "2",
        # every /health call checks afresh (tests/integration/test_ops_health_metrics_logs.py tests the cache)
        "HEALTH_CACHE_SECS": "0",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _reset_process_state()
    from app.adapters.migrate import upgrade

    upgrade(env["DATABASE_URL"])
    yield env
    _reset_process_state()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    redis_client.flushdb()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def _reset_process_state() -> None:
    from app.adapters.db import reset_engine
    from app.adapters.redis_client import reset_redis
    from app.config import reset_settings_cache
    from app.services.auth import clear_key_cache

    reset_settings_cache()
    reset_engine()
    reset_redis()
    clear_key_cache()


TABLES_TO_KEEP = {"alembic_version"}


@pytest.fixture
def db(test_env: dict[str, str]) -> Iterator[None]:
    """A clean database for the test (every table truncated before it runs)."""
    from sqlalchemy import text

    from app.adapters.db import get_engine

    engine = get_engine()
    with engine.begin() as conn:
        tables = [r[0] for r in conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")) if r[0] not in TABLES_TO_KEEP]
        if tables:
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))
    redis_lib.Redis.from_url(test_env["REDIS_URL"]).delete("im:pipeline:pending", "im:pipeline:drain-scheduled")
    yield


@pytest.fixture
def app(db: None) -> Any:
    from api import create_app

    flask_app = create_app()
    flask_app.config["TESTING"] = True
    return flask_app


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def make_key(db: None) -> Callable[..., str]:
    """make_key("event:create", ...) -> a fresh API key with those permissions."""
    from app.services.auth import create_api_key

    def make(*permissions: str, rate_limit: int | None = 0, burst: int | None = None, name: str = "test") -> str:
        return create_api_key(name, list(permissions) or ["admin"], rate_limit, burst).key

    return make


@pytest.fixture
def admin_key(make_key: Callable[..., str]) -> str:
    return make_key("admin")


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, message: str = "") -> Any:
    """Poll until `predicate()` is truthy; fail the test with `message` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {message or predicate}; last value {last!r}")


class WorkerProcess:
    """A real `celery worker` subprocess on this session's broker and database."""

    def __init__(self, env: dict[str, str], queues: str = ALL_QUEUES, concurrency: int = 2, name: str | None = None,
                 beat: bool = False) -> None:
        self.name = name or f"test-{uuid.uuid4().hex[:6]}"
        self.log_path = Path(env["DATA_DIR"]) / f"{self.name}.log"
        command = [sys.executable, "-m", "celery", "-A", "tasks.celery_app", "worker", "-Q", queues,
                   "--concurrency", str(concurrency), "-n", f"{self.name}@%h", "--loglevel", "INFO",
                   "--without-gossip", "--without-mingle"]
        if beat:
            command += ["-B", "--schedule", str(Path(env["DATA_DIR"]) / f"{self.name}-beat")]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> "WorkerProcess":
        from tasks.celery_app import app

        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
            replies = app.control.ping(destination=[f"{self.name}@{os.uname().nodename}"], timeout=0.5) or []
            return bool(replies)

        wait_for(ready, timeout, 0.2, f"worker {self.name} to answer ping")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the whole worker (main process and its pool children)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def start_worker(test_env: dict[str, str]) -> Iterator[Callable[..., WorkerProcess]]:
    """start_worker(queues=..., concurrency=...) -> a ready WorkerProcess; stopped after the test."""
    started: list[WorkerProcess] = []

    def start(**kwargs: Any) -> WorkerProcess:
        worker = WorkerProcess(test_env, **kwargs)
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """One real worker on every queue."""
    return start_worker()


from tests.outbound import outbound_config  # noqa: E402,F401  (outbound tests: a config.yaml per test)
