"""The outbound HTTP client against real loopback servers: the SSRF guard (checked on the resolved
address at connect time), retries with backoff on 429 / 5xx / timeouts / refused connections, the
circuit breaker opening, failing fast while open, and recovering through half-open."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from app.adapters import http_client
from app.adapters.http_client import DeliveryError, send
from app.services import circuit_breakers as cb
from tests.conftest import wait_for

LOOPBACK = {"allow_private": ["127.0.0.1/32", "::1/128"], "backoff_initial_secs": 0.01, "backoff_max_secs": 0.05}


def config(outbound_config, http=None, breakers=None):
    outbound_config({"notifications": {"http": {**LOOPBACK, **(http or {})}},
                     "circuit_breakers": breakers or {}})


def url(server: HTTPServer, path: str = "/hook") -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def enqueued(server: HTTPServer) -> int:
    # the session's server may still log a slow request of an earlier test: count this test's path
    return sum(1 for request, _ in server.log if request.path == "/enqueue")


# ------------------------------------------------------------------------------- SSRF guard

@pytest.mark.parametrize("target", ["http://127.0.0.1:{port}/hook", "http://localhost:{port}/hook",
                                    "http://[::ffff:127.0.0.1]:{port}/hook", "http://169.254.169.254/latest/meta-data",
                                    "http://10.1.2.3/x", "http://[::1]:{port}/hook", "http://0.0.0.0:{port}/x"])
def test_private_loopback_and_link_local_addresses_are_refused(outbound_config, httpserver: HTTPServer, target):
    outbound_config({"notifications": {"http": {"max_attempts": 3}}})
    httpserver.expect_request("/hook").respond_with_data("ok")
    started = time.perf_counter()
    with pytest.raises(DeliveryError) as refused:
        send("governance", "POST", target.format(port=httpserver.port), content=b"{}")
    assert time.perf_counter() - started < 1.0  # never connected, never retried
    assert refused.value.kind == "blocked" and not refused.value.retryable and refused.value.attempts == 1
    assert "allow_private" in str(refused.value)
    assert httpserver.log == []


def test_allow_listed_loopback_goes_through(outbound_config, httpserver: HTTPServer):
    config(outbound_config)
    httpserver.expect_request("/hook", method="POST", data=b'{"a":1}').respond_with_json({"ok": True})
    answer = send("governance", "POST", url(httpserver), content=b'{"a":1}',
                  headers={"Content-Type": "application/json"})
    assert answer.status == 200 and answer.json() == {"ok": True} and answer.attempts == 1
    assert httpserver.log[0][0].headers["User-Agent"].startswith("llm-incident-manager/")


def test_the_check_is_on_the_address_resolved_at_connect_time(outbound_config, httpserver: HTTPServer, monkeypatch):
    """A public-looking name whose DNS answer is private (rebinding) is refused; the socket goes to
    the address that was checked, not to a second lookup's answer."""
    outbound_config({"notifications": {"http": {"allow_private": ["127.0.0.1/32"]}}})
    httpserver.expect_request("/hook").respond_with_data("ok")
    real = socket.getaddrinfo
    answers = {"rebind.example.com": "169.254.169.254", "pinned.example.com": "127.0.0.1"}
    lookups: list[str] = []

    def resolver(host, port, *args, **kwargs):
        lookups.append(host)
        if host in answers:
            return real(answers[host], port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    with pytest.raises(DeliveryError) as refused:
        send("governance", "GET", f"http://rebind.example.com:{httpserver.port}/hook")
    assert refused.value.kind == "blocked" and "169.254.169.254" in str(refused.value)
    answers["pinned.example.com"] = "127.0.0.1"
    assert send("governance", "GET", f"http://pinned.example.com:{httpserver.port}/hook").status == 200
    assert lookups.count("pinned.example.com") == 1  # resolved once; connected to that answer
    assert httpserver.log[0][0].headers["Host"] == f"pinned.example.com:{httpserver.port}"


def test_host_names_in_the_allow_list_are_refused_at_start_up(outbound_config):
    from app.config import ConfigError
    from app.config.outbound import get_outbound_settings

    outbound_config({"notifications": {"http": {"allow_private": ["intranet.local"]}}})
    with pytest.raises(ConfigError, match="notifications.http.allow_private: 'intranet.local'"):
        get_outbound_settings()


# ------------------------------------------------------------------------------- retries

def test_5xx_is_retried_with_backoff_until_success(outbound_config, httpserver: HTTPServer):
    config(outbound_config)
    httpserver.expect_ordered_request("/hook").respond_with_data("down", status=500)
    httpserver.expect_ordered_request("/hook").respond_with_data("down", status=503)
    httpserver.expect_ordered_request("/hook").respond_with_data("ok", status=200)
    answer = send("governance", "POST", url(httpserver), content=b"x")
    assert answer.status == 200 and answer.attempts == 3 and len(httpserver.log) == 3
    info = cb.info("governance")
    assert info["total_requests"] == 3 and info["failed_requests"] == 2 and info["state"] == "closed"


def test_429_honours_retry_after(outbound_config, httpserver: HTTPServer):
    config(outbound_config, breakers={"slack": {"rate_limit": {"requests_per_minute": 0}}})
    httpserver.expect_ordered_request("/hook").respond_with_data("slow down", status=429, headers={"Retry-After": "1"})
    httpserver.expect_ordered_request("/hook").respond_with_data("ok")
    started = time.monotonic()
    assert send("slack", "POST", url(httpserver), content=b"x").attempts == 2
    assert time.monotonic() - started >= 1.0
    assert cb.info("slack")["failed_requests"] == 1  # 429 counts against the target


def test_4xx_is_not_retried_and_not_a_target_failure(outbound_config, httpserver: HTTPServer):
    config(outbound_config)
    httpserver.expect_request("/hook").respond_with_json({"error": "invalid_payload"}, status=400)
    with pytest.raises(DeliveryError) as failed:
        send("jira", "POST", url(httpserver), content=b"x")
    assert failed.value.status == 400 and not failed.value.retryable and failed.value.attempts == 1
    assert "invalid_payload" in str(failed.value) and len(httpserver.log) == 1
    assert cb.info("jira")["failed_requests"] == 0


def test_timeouts_are_retried_and_counted(outbound_config, httpserver: HTTPServer):
    config(outbound_config, http={"timeout_secs": 0.3, "max_attempts": 2})

    def slow(request: Request) -> Response:
        time.sleep(1.0)
        return Response("late")

    httpserver.expect_request("/hook").respond_with_handler(slow)
    with pytest.raises(DeliveryError) as failed:
        send("jira", "POST", url(httpserver), content=b"x")
    assert failed.value.kind == "transport" and failed.value.retryable and failed.value.attempts == 2
    assert "Timeout" in str(failed.value)
    info = cb.info("jira")
    assert info["failed_requests"] == 2 and info["failure_count"] == 2


def test_refused_connections_open_the_breaker_then_fail_fast_then_recover(outbound_config, httpserver: HTTPServer):
    config(outbound_config, http={"max_attempts": 2},
           breakers={"pagerduty": {"failure_threshold": 4, "success_threshold": 2, "timeout_secs": 0.5,
                                   "rate_limit": {"requests_per_minute": 0}}})
    dead = f"http://127.0.0.1:{free_port()}/enqueue"
    for _ in range(2):
        with pytest.raises(DeliveryError) as failed:
            send("pagerduty", "POST", dead, content=b"x")
        assert failed.value.kind == "transport" and "ConnectError" in str(failed.value)
    assert cb.info("pagerduty")["state"] == "open"
    # open: fails in well under 5 ms without touching the network
    httpserver.expect_request("/enqueue").respond_with_json({"status": "success"}, status=202)
    timings = []
    for _ in range(50):
        started = time.perf_counter()
        with pytest.raises(DeliveryError) as refused:
            send("pagerduty", "POST", url(httpserver, "/enqueue"), content=b"x")
        timings.append(time.perf_counter() - started)
    assert refused.value.kind == "circuit_open" and refused.value.retryable and refused.value.retry_after_secs <= 0.5
    timings.sort()
    assert timings[len(timings) // 2] < 0.005 and timings[int(len(timings) * 0.9)] < 0.005, timings[-5:]
    assert enqueued(httpserver) == 0

    # half-open after 0.5 s: trial calls reach the recovered target and close the breaker
    def recovered() -> bool:
        try:
            send("pagerduty", "POST", url(httpserver, "/enqueue"), content=b"x")
            return True
        except DeliveryError as exc:
            assert exc.kind == "circuit_open"
            return False

    wait_for(recovered, timeout=10, interval=0.05, message="the breaker's trial call")
    assert cb.info("pagerduty")["state"] == "half_open"
    send("pagerduty", "POST", url(httpserver, "/enqueue"), content=b"x")
    assert cb.info("pagerduty")["state"] == "closed" and enqueued(httpserver) == 2


def test_the_client_is_pooled_per_thread(outbound_config, httpserver: HTTPServer):
    config(outbound_config)
    httpserver.expect_request("/hook").respond_with_data("ok")
    first = http_client.get_client()
    for _ in range(5):
        send("governance", "POST", url(httpserver), content=b"x")
    assert http_client.get_client() is first
    other: list[Any] = []
    thread = threading.Thread(target=lambda: other.append(http_client.get_client()))
    thread.start()
    thread.join()
    assert other[0] is not first  # another thread, another pool (no lock shared between sender threads)
    assert other[0]._transport._pool._ssl_context is first._transport._pool._ssl_context  # one TLS context
