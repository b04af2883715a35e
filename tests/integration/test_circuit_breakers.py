"""Circuit breakers on real Redis: transitions, shared state under concurrency, fast failure,
operators' controls over REST (the reference README's curls) and the CLI, metrics."""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app.services import circuit_breakers as cb

ROOT = Path(__file__).resolve().parent.parent.parent
FAST = {"failure_threshold": 3, "success_threshold": 2, "timeout_secs": 10, "volume_threshold": 10}


def fail(name: str, times: int, now: float | None = None) -> None:
    for _ in range(times):
        cb.record(cb.acquire(name, now=now), False, "HTTP 500", now=now)


def test_opens_after_consecutive_failures_and_fails_fast(outbound_config):
    outbound_config({"circuit_breakers": {"slack": FAST}})
    cb.record(cb.acquire("slack"), True)
    fail("slack", 2)
    assert cb.info("slack")["state"] == "closed"
    fail("slack", 1)
    info = cb.info("slack")
    assert info["state"] == "open" and info["open_count"] == 1
    assert "3 consecutive failures" in info["reason"] and info["next_attempt_at"]
    timings = []
    for _ in range(200):
        started = time.perf_counter()
        with pytest.raises(cb.CircuitOpen) as refused:
            cb.acquire("slack")
        timings.append(time.perf_counter() - started)
    assert 9.0 < refused.value.retry_after_secs <= 10.0
    timings.sort()
    assert statistics.median(timings) < 0.005 and timings[int(len(timings) * 0.9)] < 0.005, timings[-5:]
    after = cb.info("slack")
    assert after["rejected_requests"] == 200 and after["total_requests"] == 4 and after["failed_requests"] == 3


def test_half_open_trials_close_or_reopen_with_backoff(outbound_config):
    outbound_config({"circuit_breakers": {"pagerduty": {
        **FAST, "recovery_strategy": {"type": "exponential_backoff", "initial_timeout_secs": 10,
                                      "max_timeout_secs": 25, "multiplier": 2.0}}}})
    t0 = time.time()
    fail("pagerduty", 3, now=t0)
    with pytest.raises(cb.CircuitOpen):
        cb.acquire("pagerduty", now=t0 + 9.9)
    # recovery timeout elapsed: two trial calls at a time (success_threshold), the third waits
    first = cb.acquire("pagerduty", now=t0 + 10.1)
    second = cb.acquire("pagerduty", now=t0 + 10.1)
    assert first.trial and second.trial and cb.info("pagerduty")["state"] == "half_open"
    with pytest.raises(cb.CircuitOpen):
        cb.acquire("pagerduty", now=t0 + 10.2)
    # a failed trial re-opens it for twice as long (exponential backoff)
    cb.record(first, False, "timeout", now=t0 + 10.3)
    assert cb.info("pagerduty")["state"] == "open"
    with pytest.raises(cb.CircuitOpen):
        cb.acquire("pagerduty", now=t0 + 10.3 + 19.9)
    trial = cb.acquire("pagerduty", now=t0 + 10.3 + 20.1)
    cb.record(trial, True, now=t0 + 30.5)
    assert cb.info("pagerduty")["state"] == "half_open"
    trial = cb.acquire("pagerduty", now=t0 + 30.6)
    cb.record(trial, True, now=t0 + 30.7)
    info = cb.info("pagerduty")
    assert info["state"] == "closed" and "2 successful trial calls" in info["reason"]
    # closed again: the back-off starts over at the initial timeout
    fail("pagerduty", 3, now=t0 + 31)
    with pytest.raises(cb.CircuitOpen) as refused:
        cb.acquire("pagerduty", now=t0 + 31)
    assert refused.value.retry_after_secs == pytest.approx(10.0, abs=0.01)


def test_error_rate_over_the_volume_threshold_opens_it(outbound_config):
    outbound_config({"circuit_breakers": {"jira": {"failure_threshold": 100, "volume_threshold": 10,
                                                    "error_rate_threshold": 0.5}}})
    for i in range(10):  # alternate: never 2 failures in a row, but half of them fail
        cb.record(cb.acquire("jira"), i % 2 == 0, None if i % 2 == 0 else "HTTP 503")
    info = cb.info("jira")
    assert info["state"] == "open" and "error rate 5/10" in info["reason"]


def test_a_stale_trial_slot_expires(outbound_config):
    outbound_config({"circuit_breakers": {"email": {**FAST, "success_threshold": 1}}})
    t0 = time.time()
    fail("email", 3, now=t0)
    cb.acquire("email", now=t0 + 10.5)  # a worker took the trial and died without reporting
    with pytest.raises(cb.CircuitOpen):
        cb.acquire("email", now=t0 + 11)
    assert cb.acquire("email", now=t0 + 20.6).trial


def test_state_is_shared_and_transitions_are_atomic_under_concurrency(outbound_config, test_env):
    outbound_config({"circuit_breakers": {"governance": {"failure_threshold": 40, "volume_threshold": 10_000}}})
    errors: list[BaseException] = []

    def hammer(ok: bool) -> None:
        try:
            for _ in range(60):
                try:
                    cb.record(cb.acquire("governance"), ok, None if ok else "HTTP 502")
                except cb.CircuitOpen:
                    pass
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i % 4 != 0,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    info = cb.info("governance")
    assert info["total_requests"] + info["rejected_requests"] == 480
    assert info["failed_requests"] <= 120
    # another process sees the same breaker: failures recorded there open it here
    code = ("from app.services import circuit_breakers as cb\n"
            "for _ in range(40):\n"
            "    cb.record(cb.acquire('governance'), False, 'HTTP 500')\n")
    cb.reset("governance")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
    info = cb.info("governance")
    assert info["state"] == "open" and info["open_count"] == 1 and info["shared"] is True
    with pytest.raises(cb.CircuitOpen):
        cb.acquire("governance")


def test_concurrent_failures_open_it_exactly_once(outbound_config):
    outbound_config({"circuit_breakers": {"shield": {"failure_threshold": 5, "volume_threshold": 10_000}}})
    barrier = threading.Barrier(6)
    permits = [cb.acquire("shield") for _ in range(30)]

    def report(chunk: list[cb.Permit]) -> None:
        barrier.wait()
        for permit in chunk:
            cb.record(permit, False, "HTTP 500")

    threads = [threading.Thread(target=report, args=(permits[i::6],)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    info = cb.info("shield")
    assert info["state"] == "open" and info["open_count"] == 1 and info["failed_requests"] == 30


def test_forced_open_stays_open_until_closed_and_reset_clears(outbound_config):
    outbound_config({"circuit_breakers": {"sentinel": FAST}})
    info = cb.force_open("sentinel", actor="test")
    assert info["state"] == "open" and info["forced"] and info["next_attempt_at"] is None
    with pytest.raises(cb.CircuitOpen) as refused:
        cb.acquire("sentinel", now=time.time() + 3600)
    assert refused.value.forced and "forced open" in str(refused.value)
    assert cb.force_close("sentinel")["state"] == "closed"
    cb.record(cb.acquire("sentinel"), True)
    assert cb.info("sentinel")["total_requests"] == 1
    reset = cb.reset("sentinel")
    assert reset["state"] == "closed" and reset["total_requests"] == 0 and reset["open_count"] == 0


def test_per_target_rate_limit(outbound_config):
    outbound_config({"circuit_breakers": {"edge-agent": {"rate_limit": {"requests_per_minute": 60, "burst": 2}}}})
    cb.acquire("edge-agent")
    cb.acquire("edge-agent")
    with pytest.raises(cb.RateLimited) as limited:
        cb.acquire("edge-agent")
    assert limited.value.retry_after_secs >= 1
    assert cb.info("edge-agent")["state"] == "closed"  # a local limit is not the target's failure


def test_unknown_names_and_the_readme_name_alias(outbound_config):
    outbound_config({"circuit_breakers": {"sentinel": {"name": "sentinel-api", "failure_threshold": 5}}})
    with pytest.raises(cb.UnknownBreaker) as unknown:
        cb.info("nope")
    assert "sentinel" in unknown.value.known
    assert cb.info("sentinel-api")["name"] == "sentinel"
    assert {b["name"] for b in cb.list_breakers()} >= {
        "sentinel", "shield", "edge-agent", "governance", "slack", "pagerduty", "jira", "email"}


def test_embedded_default_keeps_per_process_state(outbound_config, monkeypatch):
    outbound_config({"circuit_breakers": {"slack": FAST}})
    local = cb._LocalStore()
    monkeypatch.setattr(cb, "_store", lambda: local)
    fail("slack", 3)
    with pytest.raises(cb.CircuitOpen):
        cb.acquire("slack")
    assert cb.info("slack")["shared"] is False
    monkeypatch.undo()
    assert cb.info("slack")["state"] == "closed"  # Redis never saw it


# ------------------------------------------------------------------------------- REST, metrics, CLI

def test_rest_controls_as_the_reference_readme_curls_them(outbound_config, client, make_key):
    outbound_config({})
    admin = {"X-API-Key": make_key("admin")}
    reader = {"X-API-Key": make_key("incident:read")}
    assert client.post("/v1/circuit-breakers/sentinel/open").status_code == 401
    denied = client.post("/v1/circuit-breakers/sentinel/open", headers=reader)
    assert denied.status_code == 403 and "admin" in denied.get_json()["error"]["message"]
    assert cb.info("sentinel")["state"] == "closed"

    opened = client.post("/v1/circuit-breakers/sentinel/open", headers=admin)
    assert opened.status_code == 200 and opened.get_json()["state"] == "open"
    status = client.get("/v1/circuit-breakers/sentinel", headers=reader)
    assert status.status_code == 200
    body = status.get_json()
    assert body["state"] == "open" and body["forced"] is True and body["config"]["failure_threshold"] == 5
    with pytest.raises(cb.CircuitOpen):
        cb.acquire("sentinel")
    assert client.post("/v1/circuit-breakers/sentinel/close", headers=admin).get_json()["state"] == "closed"
    cb.record(cb.acquire("sentinel"), False, "HTTP 500")
    reset = client.post("/v1/circuit-breakers/sentinel/reset", headers=admin).get_json()
    assert reset["state"] == "closed" and reset["total_requests"] == 0

    listing = client.get("/v1/circuit-breakers", headers=reader).get_json()
    assert listing["next_cursor"] is None
    assert {"sentinel", "shield", "edge-agent", "governance", "slack", "pagerduty", "jira"} <= {
        b["name"] for b in listing["items"]}
    missing = client.get("/v1/circuit-breakers/nope", headers=reader)
    assert missing.status_code == 404 and "sentinel" in missing.get_json()["error"]["details"]["known"]
    assert client.post("/v1/circuit-breakers/sentinel/explode", headers=admin).status_code == 404
    assert client.get("/v1/circuit-breakers").status_code == 401


def test_metrics_show_the_shared_state(outbound_config, client, make_key):
    outbound_config({"circuit_breakers": {"slack": FAST}})
    headers = {"X-API-Key": make_key("incident:read")}
    text = client.get("/metrics", headers=headers).get_data(as_text=True)
    assert 'circuit_breaker_state{name="slack"} 0.0' in text
    fail("slack", 3)
    text = client.get("/metrics", headers=headers).get_data(as_text=True)
    for line in ('circuit_breaker_state{name="slack"} 1.0', 'circuit_breaker_requests_total{name="slack"} 3.0',
                 'circuit_breaker_requests_failed{name="slack"} 3.0', 'circuit_breaker_error_rate{name="slack"} 1.0',
                 'circuit_breaker_open_count{name="slack"} 1.0'):
        assert line in text, line


def test_cli_list_open_close_reset(outbound_config):
    outbound_config({})

    def cli(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "cli", "breakers", *args], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    assert "open (forced)" in cli("open", "jira")
    assert cb.info("jira")["state"] == "open"
    assert any(line.startswith("jira ") and "open (forced)" in line for line in cli("list").splitlines())
    assert "closed" in cli("close", "jira")
    cb.record(cb.acquire("jira"), True)
    assert '"total_requests": 1' in cli("show", "jira")
    assert "requests 0 " in cli("reset", "jira")
    failed = subprocess.run([sys.executable, "-m", "cli", "breakers", "open", "nope"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and "no circuit breaker named 'nope'" in failed.stderr


# ------------------------------------------------------------------------------- batched bookkeeping

def _raw(name: str) -> dict[str, str]:
    """The shared hash as another worker sees it (without this process's waiting counters)."""
    from app.adapters.redis_client import get_redis

    client = get_redis()
    assert client is not None
    return {k.decode(): v.decode() for k, v in client.hgetall(cb.KEY_PREFIX + name).items()}


def test_successes_are_counted_in_batches_within_the_flush_interval(outbound_config):
    outbound_config({"circuit_breakers": {"governance": FAST}})
    cb.record(cb.acquire("governance"), True)  # a fresh breaker: the first success opens a window
    for _ in range(50):
        cb.record(cb.acquire("governance"), True)
    assert "governance" in cb._closed_seen  # the quiet closed reading gave the permits (no read each)
    time.sleep(cb.COUNTS_FLUSH_SECS + 0.3)  # no further call: the timer adds them
    raw = _raw("governance")
    assert raw["requests_total"] == "51" and raw["window_requests"] == "51"
    assert raw.get("failed_total", "0") == "0"


def test_failures_across_a_batch_of_permits_open_it_once(outbound_config):
    """Permits handed out from one quiet reading: their failures are each counted at once (one
    transaction per failure) and open the breaker after failure_threshold, as without batching; the
    successes before them are in the window's counts of that decision."""
    outbound_config({"circuit_breakers": {"shield": {"failure_threshold": 5, "volume_threshold": 10_000}}})
    cb.record(cb.acquire("shield"), True)
    permits = [cb.acquire("shield") for _ in range(20)]
    assert all(p.quiet_window is not None for p in permits)
    for permit in permits[:10]:
        cb.record(permit, True)
    for permit in permits[10:]:
        cb.record(permit, False, "HTTP 500")
    info = cb.info("shield")
    assert info["state"] == "open" and info["open_count"] == 1 and "5 consecutive failures" in info["reason"]
    assert info["total_requests"] == 21 and info["failed_requests"] == 10
    with pytest.raises(cb.CircuitOpen):
        cb.acquire("shield")


def test_an_opening_by_another_worker_reaches_a_quiet_reading_within_its_lifetime(outbound_config):
    outbound_config({"circuit_breakers": {"sentinel": FAST}})
    t0 = time.time()
    cb.record(cb.acquire("sentinel", now=t0), True, now=t0)
    cb.acquire("sentinel", now=t0)  # remembered: closed, no failure
    # another worker opens it (its transaction, not this process's operator call)
    other = cb._RedisStore(cb._store().client)  # type: ignore[union-attr]
    other.update("sentinel", lambda s: (None, cb._open(s, cb.config_of("sentinel"), t0, 0, "elsewhere")))
    assert not cb.acquire("sentinel", now=t0 + cb.LOCAL_CLOSED_CACHE_SECS / 2).trial  # still the reading
    with pytest.raises(cb.CircuitOpen):
        cb.acquire("sentinel", now=t0 + cb.LOCAL_CLOSED_CACHE_SECS + 0.01)


def test_half_open_lets_one_probe_through_to_concurrent_callers(outbound_config):
    outbound_config({"circuit_breakers": {"edge-agent": {**FAST, "success_threshold": 1,
                                                         "half_open_max_calls": 1}}})
    t0 = time.time()
    fail("edge-agent", 3, now=t0)
    barrier = threading.Barrier(8)
    trials: list[cb.Permit] = []
    refused: list[cb.CircuitOpen] = []

    def call() -> None:
        barrier.wait()
        try:
            trials.append(cb.acquire("edge-agent", now=t0 + 10.5))
        except cb.CircuitOpen as exc:
            refused.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(trials) == 1 and trials[0].trial and len(refused) == 7
    cb.record(trials[0], True, now=t0 + 10.6)
    assert cb.info("edge-agent")["state"] == "closed"
    assert not cb.acquire("edge-agent", now=t0 + 10.7).trial  # closed: calls go through again


def test_waiting_counters_survive_an_unreachable_redis(outbound_config, monkeypatch):
    import redis as redis_lib

    from tests.conftest import wait_for

    outbound_config({"circuit_breakers": {"jira": FAST}})
    cb.record(cb.acquire("jira"), True)
    for _ in range(5):
        cb.record(cb.acquire("jira"), True)  # waiting in this process
    with socket_closed_port() as port:
        dead = cb._RedisStore(redis_lib.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2))
        monkeypatch.setattr(cb, "_store", lambda: dead)
        with pytest.raises(redis_lib.RedisError):
            cb.flush_counts()
        monkeypatch.undo()
    # Redis is back: the counts kept are written by the retry timer, none lost, none twice
    wait_for(lambda: _raw("jira").get("requests_total") == "6", timeout=5, interval=0.05,
             message="the waiting counters written after Redis came back")
    time.sleep(cb.COUNTS_RETRY_SECS + 0.2)
    assert _raw("jira")["requests_total"] == "6" and _raw("jira")["window_requests"] == "6"


class socket_closed_port:
    """A loopback port nothing listens on (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        return None
