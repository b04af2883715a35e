"""The outbound HTTP client every channel uses: one pooled httpx client per thread, timeouts, the
target's circuit breaker and rate limit, retries with exponential backoff and full jitter
(tenacity) for 429 / 5xx / connection errors, and an SSRF guard.

The guard sits in the connection pool's network backend: the host name is resolved there, every
address checked, and the socket opened to the checked address itself, so a name that resolves to
a public address for a check and to 127.0.0.1 for the connection (DNS rebinding) never reaches
the private one. TLS still verifies the certificate against the URL's host name.
docs/notifications.md, "Outbound HTTP".
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import httpcore
import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from app import metrics
from app.config.outbound import HttpSettings, get_outbound_settings
from app.services import circuit_breakers

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
USER_AGENT = "llm-incident-manager/0.1"
MAX_RETRY_AFTER_SECS = 60.0  # a receiver's Retry-After is honoured up to this long within one send


class BlockedDestination(Exception):
    """The URL's host resolves only to addresses the SSRF guard refuses."""

    def __init__(self, host: str, addresses: list[str]) -> None:
        shown = ", ".join(addresses) or "no address"
        super().__init__(f"refusing to connect to {host} ({shown}): private, loopback, link-local or reserved "
                         "address; add it to notifications.http.allow_private to allow it")
        self.host = host
        self.addresses = addresses


def is_refused(address: str, allow: Iterable[Network]) -> bool:
    """True for an address outside the public internet that no allow-listed network contains."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(ip in network for network in allow):
        return False
    return not ip.is_global or ip.is_multicast


class GuardedBackend(httpcore.SyncBackend):
    """Resolves, checks, then connects to the checked address (never resolving twice)."""

    def __init__(self, allow: tuple[Network, ...]) -> None:
        self.allow = allow

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        permitted = [a for a in addresses if not is_refused(a, self.allow)]
        if not permitted:
            metrics.OUTBOUND_BLOCKED.inc()
            raise BlockedDestination(host, addresses)
        error: Exception | None = None
        for address in permitted:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport with the guarded backend in its connection pool (no proxies: a proxy would
    connect on our behalf to addresses the guard never saw)."""

    def __init__(self, allow: tuple[Network, ...], limits: httpx.Limits,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(trust_env=False, limits=limits)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(allow),
        )


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes
    attempts: int
    elapsed_ms: float

    def json(self) -> Any:
        import orjson

        return orjson.loads(self.body) if self.body else None


@dataclass
class DeliveryError(Exception):
    """A send that did not succeed. `retryable`: worth trying again later (the target failed, its
    breaker is open, or its rate limit was reached); False for answers that will not change (4xx)."""

    target: str
    message: str
    retryable: bool
    status: int | None = None
    attempts: int = 0
    retry_after_secs: float | None = None
    kind: str = "error"  # http_status, transport, circuit_open, rate_limited, blocked
    body: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


_thread = threading.local()
_ssl_contexts: dict[int, ssl.SSLContext] = {}  # pid -> the TLS context every client of the process shares
_ssl_lock = threading.Lock()


def _ssl_context() -> ssl.SSLContext:
    context = _ssl_contexts.get(os.getpid())
    if context is None:
        with _ssl_lock:
            context = _ssl_contexts.get(os.getpid())
            if context is None:  # loading the CA bundle costs tens of ms: once per process
                context = _ssl_contexts[os.getpid()] = httpx.create_ssl_context(trust_env=False)
    return context


def get_client(settings: HttpSettings | None = None) -> httpx.Client:
    """This thread's pooled client (keep-alive) for the current outbound settings. One per thread:
    a connection pool shared by the sender pool's threads spent about a fifth of their CPU time
    handing its lock around (bench/notifications.py profile); the TLS context is the process's."""
    settings = settings or get_outbound_settings().http
    key = (os.getpid(), settings)
    held: tuple[tuple[int, HttpSettings], httpx.Client] | None = getattr(_thread, "client", None)
    if held is not None and held[0] == key:
        return held[1]
    limits = httpx.Limits(max_connections=settings.max_connections,
                          max_keepalive_connections=settings.max_keepalive_connections)
    client = httpx.Client(transport=GuardedTransport(settings.allow_private, limits, _ssl_context()),
                          headers={"User-Agent": USER_AGENT}, follow_redirects=False, trust_env=False)
    _thread.client = (key, client)
    if held is not None and held[0][0] == os.getpid():
        held[1].close()  # the settings changed: this thread's old connections go
    return client


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: the backoff decides instead


def _attempt(target: str, method: str, url: str, content: bytes | None, headers: Mapping[str, str],
             timeout: httpx.Timeout, client: httpx.Client, attempt: int) -> Response:
    try:
        permit = circuit_breakers.acquire(target)
    except circuit_breakers.CircuitOpen as exc:
        metrics.OUTBOUND_REQUESTS.labels(target=target, outcome="circuit_open").inc()
        raise DeliveryError(target, str(exc), True, attempts=attempt, retry_after_secs=exc.retry_after_secs,
                            kind="circuit_open") from None
    except circuit_breakers.RateLimited as exc:
        metrics.OUTBOUND_REQUESTS.labels(target=target, outcome="rate_limited").inc()
        raise DeliveryError(target, str(exc), True, attempts=attempt, retry_after_secs=exc.retry_after_secs,
                            kind="rate_limited") from None
    started = time.perf_counter()
    host = httpx.URL(url).host  # logs name the host only: webhook URLs carry secrets in their path
    try:
        answer = client.request(method, url, content=content, headers=dict(headers), timeout=timeout)
    except BlockedDestination as exc:
        circuit_breakers.record(permit, True)  # the target was never contacted: not its failure
        metrics.OUTBOUND_REQUESTS.labels(target=target, outcome="blocked").inc()
        raise DeliveryError(target, str(exc), False, attempts=attempt, kind="blocked") from None
    except httpx.TransportError as exc:
        elapsed = time.perf_counter() - started
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        circuit_breakers.record(permit, False, reason[:300])
        metrics.OUTBOUND_REQUESTS.labels(target=target, outcome="transport_error").inc()
        metrics.OUTBOUND_DURATION.labels(target=target).observe(elapsed)
        log.warning("outbound request failed", extra={"target": target, "host": host, "attempt": attempt,
                                                      "error": reason[:300], "duration_ms": round(elapsed * 1000, 1)})
        raise DeliveryError(target, f"{target}: {reason}", True, attempts=attempt, kind="transport") from None
    elapsed = time.perf_counter() - started
    metrics.OUTBOUND_DURATION.labels(target=target).observe(elapsed)
    status = answer.status_code
    target_failed = status == 429 or status >= 500
    circuit_breakers.record(permit, not target_failed, None if not target_failed else f"HTTP {status}")
    outcome = "success" if status < 400 else f"http_{status // 100}xx"
    metrics.OUTBOUND_REQUESTS.labels(target=target, outcome=outcome).inc()
    if status >= 400:
        text = answer.text[:500]
        log.warning("outbound request answered with an error", extra={
            "target": target, "host": host, "status": status, "attempt": attempt,
            "duration_ms": round(elapsed * 1000, 1)})
        raise DeliveryError(target, f"{target} answered HTTP {status}: {text}", target_failed, status=status,
                            attempts=attempt, retry_after_secs=_retry_after(answer), kind="http_status", body=text)
    return Response(status, dict(answer.headers), answer.content, attempt, round(elapsed * 1000, 2))


def _retryable(exc: BaseException) -> bool:
    # an open breaker or a reached rate limit is not retried in-process: the caller reschedules
    return isinstance(exc, DeliveryError) and exc.retryable and exc.kind in ("transport", "http_status")


def retry_policy(attempts: int, settings: HttpSettings) -> Retrying:
    """Up to `attempts` tries of a DeliveryError-raising call, with full-jitter exponential backoff
    (a uniform wait in [0, initial * 2^(n-1)], capped); a receiver's Retry-After is a floor."""

    def wait(state: RetryCallState) -> float:
        ceiling = min(settings.backoff_max_secs, settings.backoff_initial_secs * 2 ** (state.attempt_number - 1))
        delay = random.uniform(0, ceiling)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, DeliveryError) and exc.retry_after_secs:
            delay = max(delay, min(exc.retry_after_secs, MAX_RETRY_AFTER_SECS))
        return delay

    return Retrying(stop=stop_after_attempt(attempts), wait=wait, retry=retry_if_exception(_retryable),
                    reraise=True)


def send(target: str, method: str, url: str, *, content: bytes | None = None,
         headers: Mapping[str, str] | None = None, timeout_secs: float | None = None,
         max_attempts: int | None = None) -> Response:
    """One outbound request through `target`'s breaker, retried with backoff and jitter on 429, 5xx
    and connection errors. Returns the 2xx/3xx response; raises DeliveryError otherwise."""
    settings = get_outbound_settings().http
    client = get_client(settings)
    timeout = httpx.Timeout(timeout_secs or settings.timeout_secs,
                            connect=min(settings.connect_timeout_secs, timeout_secs or settings.timeout_secs))
    attempts = max_attempts or settings.max_attempts

    retrying = retry_policy(attempts, settings)
    for attempt in retrying:
        with attempt:
            return _attempt(target, method, url, content, headers or {}, timeout, client,
                            attempt.retry_state.attempt_number)
    raise AssertionError("unreachable: tenacity re-raises the last error")
