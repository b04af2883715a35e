"""Operations: health (live, ready, full with a real worker and beat), Prometheus metrics
(multiprocess: a worker's counters show in the web's /metrics), JSON logs, the OpenAPI document."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import pytest

from tasks.queues import QUEUES
from tests.conftest import wait_for

SENTINEL = json.loads((Path(__file__).parent.parent / "fixtures" / "sentinel-event.json").read_text())


def test_live_and_ready_need_no_credentials(client):
    live = client.get("/health/live")
    assert live.status_code == 200 and live.get_json() == {"status": "alive"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.get_json() == {"status": "ready"}


@pytest.fixture
def database_unreachable(monkeypatch, test_env):  # type: ignore[no-untyped-def]
    """Point this process's settings at a closed port (restored afterwards)."""
    from app.adapters.db import reset_engine
    from app.config import reset_settings_cache

    monkeypatch.setenv("DATABASE_URL", "postgresql://root@127.0.0.1:9/nowhere")
    reset_settings_cache()
    reset_engine()
    yield
    monkeypatch.setenv("DATABASE_URL", test_env["DATABASE_URL"])
    reset_settings_cache()
    reset_engine()


def test_ready_is_503_when_the_database_is_unreachable(app, make_key, database_unreachable):
    client = app.test_client()
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.get_json() == {"status": "not_ready"}
    assert client.get("/health/live").status_code == 200  # alive all the same: don't restart, wait


def test_health_is_open_and_names_each_dependency_without_secrets(client, test_env):
    """The reference README's `curl http://localhost:8080/health`: no credential, every dependency
    by name, and nothing of the configuration's secrets or URLs."""
    response = client.get("/health")
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body["checks"]) == {"database", "broker", "workers", "beat", "escalation", "analytics"}
    assert body["checks"]["database"]["status"] == "up" and body["checks"]["broker"]["status"] == "up"
    assert body["checks"]["escalation"] == {"status": "up", "due": 0, "oldest_overdue_seconds": None}
    assert body["checks"]["analytics"] == {"status": "up", "rolled_up_through": None, "days_waiting": 0,
                                           "dirty_days": 0}
    text = response.get_data(as_text=True)
    for secret in (test_env["API_KEY_SECRET"], test_env["JWT_SECRET"], test_env["DATABASE_URL"],
                   test_env["REDIS_URL"], test_env["DATABASE_URL"].rsplit("/", 1)[1]):
        assert secret not in text


def test_api_v1_health_checks_the_callers_key(client, make_key):
    """The integration guide's troubleshooting: `/api/v1/health` with the key says whether the key works."""
    missing = client.get("/api/v1/health")
    assert missing.status_code == 401 and missing.get_json()["error"]["code"] == "unauthenticated"
    wrong = client.get("/api/v1/health", headers={"X-API-Key": "im_00000000_not-a-key"})
    assert wrong.status_code == 401
    assert client.get("/api/v1/health", headers={"X-API-Key": make_key("event:create")}).status_code == 200


def test_health_reports_the_escalation_backlog(client, db):
    """An incident due for paging that no sweep has reached: counted; overdue past a minute, the
    escalation check is down and the whole health degraded (no worker or beat runs here)."""
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import text

    from app.adapters.db import unit_of_work

    now = datetime.now(timezone.utc)
    with unit_of_work() as session:
        for number, due in ((1, now - timedelta(seconds=5)), (2, now - timedelta(seconds=300)),
                            (3, now + timedelta(hours=1))):
            session.execute(text(
                "INSERT INTO incidents (id, title, description, source, severity, status, fingerprint, event_count,"
                " first_seen, last_seen, created_at, updated_at, tags, sla_acknowledge_breached,"
                " sla_resolve_breached, escalation_level, next_escalation_at)"
                " VALUES (:id, 't', '', 'monitoring', 'P1', 'NEW', :fp, 1, :now, :now, :now, :now, '{}',"
                " false, false, 0, :due)"), {"id": f"INC-20261206-0000{number}", "fp": f"fp-{number}",
                                             "now": now, "due": due})
    body = client.get("/health").get_json()
    escalation = body["checks"]["escalation"]
    assert escalation["status"] == "down" and escalation["due"] == 2
    assert 300 <= escalation["oldest_overdue_seconds"] < 400
    assert body["status"] in ("degraded", "unhealthy")


def test_health_reports_database_broker_workers_and_beat(client, make_key, start_worker):
    from app.services import health

    key = make_key("event:create")  # any valid credential
    health._workers_cache = None
    down = client.get("/health", headers={"X-API-Key": key}).get_json()
    assert down["checks"]["workers"]["status"] == "down"
    assert down["status"] == "degraded"

    worker = start_worker(beat=True)
    health._workers_cache = None
    body = wait_for(lambda: _health_when(client, key, lambda b: b["checks"]["beat"]["status"] == "up"), 40,
                    0.5, "beat's first heartbeat")
    checks = body["checks"]
    assert checks["database"]["status"] == "up" and checks["database"]["latency_ms"] >= 0
    assert checks["broker"]["status"] == "up" and checks["broker"]["transport"] == "redis"
    assert checks["workers"]["status"] == "up" and checks["workers"]["count"] >= 1
    assert any(name.startswith(worker.name) for name in checks["workers"]["workers"])
    assert 0 <= checks["beat"]["lag_seconds"] < 60
    assert body["status"] == "healthy"
    assert set(body["queues"]) == set(QUEUES)
    assert client.get("/api/v1/health", headers={"X-API-Key": key}).status_code == 200


def test_health_and_metrics_show_a_queues_depth_and_oldest_age_on_redis(client, make_key, test_env):
    """A message nobody consumes: /health and /metrics count it and age it (no worker runs here)."""
    import redis
    from prometheus_client import REGISTRY

    from tasks.celery_app import app as celery

    key = make_key("incident:read")
    broker = redis.Redis.from_url(test_env["REDIS_URL"])
    lists = [f"playbooks{suffix}" for suffix in ("", "\x06\x163", "\x06\x166", "\x06\x169")]
    broker.delete(*lists)  # whatever an earlier test of this session left there
    before = client.get("/health", headers={"X-API-Key": key}).get_json()["queues"]["playbooks"]
    assert before == {"depth": 0, "oldest_age_seconds": None}
    sent_at = time.time()
    celery.send_task("ops.health_probe", args=[], queue="playbooks")  # a queue no test worker has here
    try:
        body = client.get("/health", headers={"X-API-Key": key}).get_json()
        playbooks = body["queues"]["playbooks"]
        assert playbooks["depth"] == 1
        assert 0 <= playbooks["oldest_age_seconds"] <= time.time() - sent_at + 0.01
        assert client.get("/metrics", headers={"X-API-Key": key}).status_code == 200
        # the scrape refreshed the gauges (read from the registry: whether this pytest process's own
        # values reach the multiprocess exposition depends on import order; test_run.py reads the
        # exposition of a real web process)
        assert REGISTRY.get_sample_value("incident_manager_queue_depth", {"queue": "playbooks"}) == 1
        assert REGISTRY.get_sample_value("incident_manager_queue_oldest_age_seconds", {"queue": "playbooks"}) >= 0
    finally:
        broker.delete(*lists)


def _health_when(client, key, predicate):  # type: ignore[no-untyped-def]
    from app.services import health

    health._workers_cache = None
    response = client.get("/health", headers={"X-API-Key": key})
    body = response.get_json()
    return body if response.status_code == 200 and predicate(body) else None


def test_health_is_503_when_the_database_is_down(app, make_key, database_unreachable):
    from app.services import auth

    key = "im_00000000_not-checked-because-cached-principal"
    principal = auth.Principal(id="x", name="probe", permissions=frozenset({"admin"}), requests_per_minute=0, burst=1)
    with auth._cache_lock:
        auth._cache[auth.digest_key(key)] = (time.monotonic() + 30, principal)
    response = app.test_client().get("/health", headers={"X-API-Key": key})
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unhealthy" and body["checks"]["database"]["status"] == "down"


METRIC_NAMES = [
    "incident_manager_alerts_processed_total",
    "incident_manager_incidents_created_total",
    "incident_manager_incidents_resolved_total",
    "incident_manager_processing_duration_seconds",
    "incident_manager_task_duration_seconds",
    "incident_manager_queue_depth",
    "incident_manager_queue_oldest_age_seconds",
]


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)}\s+([0-9.e+-]+)$", re.M)
    return sum(float(v) for v in pattern.findall(text))


def test_metrics_are_open_unless_a_key_is_required(client, make_key, monkeypatch):
    from app.config import reset_settings_cache

    response = client.get("/metrics")
    assert response.status_code == 200 and "incident_manager_alerts_processed_total" in response.get_data(as_text=True)
    monkeypatch.setenv("METRICS_REQUIRE_KEY", "true")
    reset_settings_cache()
    try:
        key = make_key("incident:read")
        assert client.get("/metrics").status_code == 401
        bearer = client.get("/metrics", headers={"Authorization": f"Bearer {key}"})  # as Prometheus sends it
        assert bearer.status_code == 200
    finally:
        monkeypatch.delenv("METRICS_REQUIRE_KEY")
        reset_settings_cache()


def test_metrics_include_what_a_worker_process_counted(client, make_key, worker):
    """The pytest process plays the web here; the counter it shows was incremented by the worker
    process, through the shared PROMETHEUS_MULTIPROC_DIR."""
    key = make_key("admin")
    headers = {"X-API-Key": key}
    before = _metric(client.get("/metrics", headers=headers).get_data(as_text=True),
                     "incident_manager_alerts_processed_total")
    for i in range(3):
        assert client.post("/api/v1/events/sentinel", json=dict(SENTINEL, event_id=f"m-{i}"),
                           headers=headers).status_code == 202

    def processed() -> float:
        text = client.get("/metrics", headers=headers).get_data(as_text=True)
        value = _metric(text, "incident_manager_alerts_processed_total")
        return value if value >= before + 3 else 0

    wait_for(processed, 30, 0.3, "the worker's alerts_processed counter in the web's /metrics")
    text = client.get("/metrics", headers=headers).get_data(as_text=True)
    assert "incident_manager_task_duration_seconds_bucket" in text
    assert re.search(r'incident_manager_task_duration_seconds_count\{task="pipeline\.\w+"\} [1-9]', text)


def test_metric_names_of_the_reference_readme_are_registered():
    from prometheus_client import REGISTRY, generate_latest

    import app.metrics  # noqa: F401

    text = generate_latest(REGISTRY).decode()
    for name in METRIC_NAMES:
        assert f"# TYPE {name.removesuffix('_total')}" in text or f"# TYPE {name}" in text, name


class _Capture(logging.Handler):
    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def log_lines(app):  # type: ignore[no-untyped-def]
    """JSON lines as the app's own formatter writes them."""
    from app.logging import JsonFormatter

    root = logging.getLogger()
    capture = _Capture(JsonFormatter())
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    yield capture.lines
    root.removeHandler(capture)
    root.setLevel(old_level)


def test_json_logs_carry_the_request_id_and_no_secrets(app, make_key, log_lines):
    from app.services.auth import create_token

    client = app.test_client()
    key = make_key("event:create")
    token = create_token("someone", 60)
    response = client.get(f"/api/v1/incidents?token={token}&api_key={key}&status=NEW",
                          headers={"X-API-Key": key, "X-Request-ID": "req-abc-123"})
    assert response.status_code == 403
    assert response.headers["X-Request-ID"] == "req-abc-123"
    entries = [json.loads(line) for line in log_lines]
    access = [e for e in entries if e["logger"] == "api.access"]
    assert access, log_lines
    entry = access[-1]
    assert entry["request_id"] == "req-abc-123"
    assert (entry["method"], entry["path"], entry["status"], entry["level"]) == (
        "GET", "/api/v1/incidents", 403, "info")
    assert entry["query"]["status"] == "NEW"
    assert entry["query"]["token"] == "[REDACTED]" and entry["query"]["api_key"] == "[REDACTED]"
    joined = "\n".join(log_lines)
    assert key not in joined and token not in joined

    # a key or token inside any logged value is redacted too
    logging.getLogger("test").warning(f"client sent {key} and {token}", extra={"header": f"Bearer {token}",
                                                                              "authorization": "x", "n": 1})
    last = json.loads(log_lines[-1])
    assert key not in log_lines[-1] and token not in log_lines[-1]
    assert last["message"] == "client sent [REDACTED] and [REDACTED]"
    assert last["authorization"] == "[REDACTED]" and last["n"] == 1


def test_each_request_gets_a_request_id(client):
    first = client.get("/health/live").headers["X-Request-ID"]
    second = client.get("/health/live").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", first) and first != second


def test_health_says_when_the_analytics_rollup_falls_behind(client, db):
    """Closed days nobody rolled up (no beat here): the analytics check is down past two days and
    the health degraded; one rollup later it is up and says through which day."""
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import text

    from app.adapters.db import unit_of_work
    from app.services.analytics import rollup

    created = datetime.now(timezone.utc) - timedelta(days=5)
    with unit_of_work() as session:
        session.execute(text(
            "INSERT INTO incidents (id, title, description, source, severity, status, fingerprint, event_count,"
            " first_seen, last_seen, created_at, updated_at, tags, sla_acknowledge_breached,"
            " sla_resolve_breached, escalation_level) VALUES ('INC-OLD-1', 't', '', 'monitoring', 'P1', 'NEW',"
            " 'fp-old', 1, :at, :at, :at, :at, '{}', false, false, 0)"), {"at": created})
    body = client.get("/health").get_json()
    analytics = body["checks"]["analytics"]
    assert analytics["status"] == "down" and analytics["days_waiting"] >= 4 and analytics["rolled_up_through"] is None
    assert analytics["dirty_days"] == 1  # the insert into a closed day marked it
    assert body["status"] in ("degraded", "unhealthy")
    rollup(now=datetime.now(timezone.utc) + timedelta(hours=1))
    analytics = client.get("/health").get_json()["checks"]["analytics"]
    assert analytics["status"] == "up" and analytics["dirty_days"] == 0 and analytics["rolled_up_through"]


def test_health_checks_are_reused_for_health_cache_secs(client, make_key, test_env, monkeypatch):
    """/health is open: answers within HEALTH_CACHE_SECS reuse one round of checks (and say so); a
    message queued meanwhile shows once the window has passed."""
    import redis

    from app.config import reset_settings_cache
    from app.services import health
    from tasks.celery_app import app as celery

    monkeypatch.setenv("HEALTH_CACHE_SECS", "0.6")
    reset_settings_cache()
    health._full_cache = None
    broker = redis.Redis.from_url(test_env["REDIS_URL"])
    lists = [f"playbooks{suffix}" for suffix in ("", "\x06\x163", "\x06\x166", "\x06\x169")]
    broker.delete(*lists)
    try:
        first = client.get("/health").get_json()
        assert first["queues"]["playbooks"]["depth"] == 0 and "cached" not in first
        celery.send_task("ops.health_probe", args=[], queue="playbooks")  # a queue no test worker has here
        again = client.get("/health").get_json()
        assert again["cached"] is True and again["queues"]["playbooks"]["depth"] == 0
        later = wait_for(lambda: (lambda b: b if "cached" not in b else None)(client.get("/health").get_json()),
                         5, 0.1, "the health cache expires")
        assert later["queues"]["playbooks"]["depth"] == 1
    finally:
        broker.delete(*lists)
        health._full_cache = None
        monkeypatch.setenv("HEALTH_CACHE_SECS", test_env["HEALTH_CACHE_SECS"])  # settings are cached per process
        reset_settings_cache()
