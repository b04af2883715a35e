"""Circuit breakers, one per outbound target: closed -> open -> half-open -> closed.

The transition rules are the pure functions `_on_acquire` / `_on_result` below, applied to a small
state record. With Redis the record is a hash every worker shares, changed under WATCH/MULTI (a
transaction that retries when another worker changed the hash first), so all workers see one
breaker. In the embedded default (no Redis) each process keeps its own records under a lock: a
breaker then opens per process. docs/notifications.md, "Circuit breakers".
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Mapping, TypeVar

import redis

from app import metrics
from app.adapters.redis_client import get_redis
from app.config.outbound import BreakerConfig, get_outbound_settings
from app.services.ratelimit import limiter

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_CODES = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}  # circuit_breaker_state's values
KEY_PREFIX = "im:breaker:"
# Counters kept beside the state (HINCRBY, never part of a transition decision).
STATS = ("requests_total", "failed_total", "rejected_total", "opened_total")

T = TypeVar("T")
State = dict[str, str]


class UnknownBreaker(LookupError):
    """No breaker of that name (not a configured target or integration client)."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no circuit breaker named {name!r} (known: {', '.join(known)})")
        self.name = name
        self.known = known


class CircuitOpen(Exception):
    """The breaker refused the call without trying it."""

    def __init__(self, name: str, retry_after_secs: float, forced: bool) -> None:
        why = "forced open by an operator" if forced else f"open; next trial in {retry_after_secs:.1f} s"
        super().__init__(f"circuit breaker {name!r} is {why}")
        self.name = name
        self.retry_after_secs = retry_after_secs
        self.forced = forced


class RateLimited(Exception):
    """The target's own rate limit refused the call (not a failure of the target)."""

    def __init__(self, name: str, retry_after_secs: float) -> None:
        super().__init__(f"rate limit of target {name!r} reached; retry in {retry_after_secs:.0f} s")
        self.name = name
        self.retry_after_secs = retry_after_secs


@dataclass(frozen=True)
class Permit:
    """Leave to make one call; hand it back to `record`. `trial` calls are half-open probes."""

    name: str
    trial: bool
    # acquire saw the breaker closed with no failure in a current window (at this window start):
    # a success then only moves counters, without reading the state again
    quiet_window: float | None = None


# ------------------------------------------------------------------------------- the rules (pure)

def _f(state: State, key: str) -> float:
    return float(state.get(key) or 0)


def _open(state: State, cfg: BreakerConfig, now: float, reopened: int, reason: str) -> State:
    return {**state, "state": OPEN, "opened_at": repr(now), "retry_at": repr(now + cfg.open_timeout(reopened)),
            "reopened": str(reopened), "failures": "0", "successes": "0", "trials": "0", "forced": "0",
            "reason": reason, "changed_at": repr(now)}


def _closed(state: State, now: float, reason: str) -> State:
    return {**state, "state": CLOSED, "failures": "0", "successes": "0", "trials": "0", "forced": "0",
            "reopened": "0", "window_start": repr(now), "window_requests": "0", "window_failures": "0",
            "retry_at": "0", "reason": reason, "changed_at": repr(now)}


def _on_acquire(state: State, cfg: BreakerConfig, now: float) -> tuple[bool, bool, State | None]:
    """(allowed, trial, new state or None when unchanged) for one call about to be made."""
    current = state.get("state", CLOSED)
    if current == CLOSED:
        return True, False, None
    if current == OPEN:
        if state.get("forced") == "1" or now < _f(state, "retry_at"):
            return False, False, None
        return True, True, {**state, "state": HALF_OPEN, "trials": "1", "trial_started": repr(now),
                            "successes": "0", "reason": "recovery timeout elapsed", "changed_at": repr(now)}
    # half-open: a few trial calls at a time; trials a dead worker never reported expire after timeout_secs
    if int(_f(state, "trials")) < cfg.trial_calls:
        return True, True, {**state, "trials": str(int(_f(state, "trials")) + 1)}
    if now - _f(state, "trial_started") >= cfg.timeout_secs:
        return True, True, {**state, "trials": "1", "trial_started": repr(now)}
    return False, False, None


def _on_result(state: State, cfg: BreakerConfig, now: float, ok: bool, trial: bool,
               error: str | None) -> State | None:
    """The state after one call's outcome (None: unchanged)."""
    current = state.get("state", CLOSED)
    if current == HALF_OPEN and trial:
        remaining = str(max(0, int(_f(state, "trials")) - 1))
        if not ok:
            return _open(state, cfg, now, int(_f(state, "reopened")) + 1, f"trial call failed: {error}")
        successes = int(_f(state, "successes")) + 1
        if successes >= cfg.success_threshold:
            return _closed(state, now, f"{successes} successful trial calls")
        return {**state, "successes": str(successes), "trials": remaining}
    if current != CLOSED:
        return None  # a call that started before the breaker opened: counted in the stats only
    new = dict(state)
    if now - _f(state, "window_start") >= cfg.window_secs:
        new.update(window_start=repr(now), window_requests="0", window_failures="0")
    requests = int(_f(new, "window_requests")) + 1
    failed = int(_f(new, "window_failures")) + (0 if ok else 1)
    new.update(window_requests=str(requests), window_failures=str(failed))
    if ok:
        new["failures"] = "0"
        return new
    failures = int(_f(state, "failures")) + 1
    new["failures"] = str(failures)
    if failures >= cfg.failure_threshold:
        return _open(new, cfg, now, 0, f"{failures} consecutive failures, last: {error}")
    if requests >= cfg.volume_threshold and failed / requests >= cfg.error_rate_threshold:
        return _open(new, cfg, now, 0, f"error rate {failed}/{requests} in the window, last: {error}")
    return new


# ------------------------------------------------------------------------------- state stores

class _RedisStore:
    """The records as Redis hashes; transitions under WATCH/MULTI."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def read(self, name: str) -> State:
        raw: Any = self.client.hgetall(KEY_PREFIX + name)
        return {k.decode(): v.decode() for k, v in raw.items()}

    def read_many(self, names: list[str]) -> list[State]:
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(KEY_PREFIX + name)
        return [{k.decode(): v.decode() for k, v in raw.items()} for raw in pipe.execute()]

    def update(self, name: str, change: Callable[[State], tuple[Any, State | None]],
               stats: Mapping[str, int] | None = None) -> Any:
        key = KEY_PREFIX + name
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw: Any = pipe.hgetall(key)
                    state = {k.decode(): v.decode() for k, v in raw.items()}
                    answer, new = change(state)
                    pipe.multi()
                    if new is not None:
                        pipe.hset(key, mapping=dict(new))  # type: ignore[arg-type]
                    for stat, amount in (stats or {}).items():
                        pipe.hincrby(key, stat, amount)
                    pipe.execute()
                    return answer
                except redis.WatchError:
                    continue  # another worker changed the breaker first: decide again on its state

    def add(self, name: str, stats: Mapping[str, int]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for stat, amount in stats.items():
            pipe.hincrby(KEY_PREFIX + name, stat, amount)
        pipe.execute()

    def replace(self, name: str, state: State | None) -> None:
        pipe = self.client.pipeline()
        pipe.delete(KEY_PREFIX + name)
        if state:
            pipe.hset(KEY_PREFIX + name, mapping=dict(state))  # type: ignore[arg-type]
        pipe.execute()


class _LocalStore:
    """Per-process records (embedded default, no Redis)."""

    def __init__(self) -> None:
        self.states: dict[str, State] = {}
        self.lock = threading.Lock()

    def read(self, name: str) -> State:
        with self.lock:
            return dict(self.states.get(name, {}))

    def read_many(self, names: list[str]) -> list[State]:
        with self.lock:
            return [dict(self.states.get(n, {})) for n in names]

    def update(self, name: str, change: Callable[[State], tuple[Any, State | None]],
               stats: Mapping[str, int] | None = None) -> Any:
        with self.lock:
            state = self.states.setdefault(name, {})
            answer, new = change(dict(state))
            if new is not None:
                state.update(new)
            for stat, amount in (stats or {}).items():
                state[stat] = str(int(state.get(stat) or 0) + amount)
            return answer

    def add(self, name: str, stats: Mapping[str, int]) -> None:
        self.update(name, lambda s: (None, None), stats)

    def replace(self, name: str, state: State | None) -> None:
        with self.lock:
            self.states[name] = dict(state or {})


_local = _LocalStore()


def _store() -> _RedisStore | _LocalStore:
    client = get_redis()
    return _RedisStore(client) if client is not None else _local


# ------------------------------------------------------------------------------- the service

def config_of(name: str) -> BreakerConfig:
    """The breaker of a target or integration client, by name or by its README `name:`."""
    outbound = get_outbound_settings()
    cfg = outbound.breaker(name)
    if cfg is None:
        raise UnknownBreaker(name, sorted(outbound.breakers))
    return cfg


def names() -> list[str]:
    return sorted(get_outbound_settings().breakers)


# An open breaker seen by this process refuses calls here without asking Redis again for at most
# this long (a refusal then costs microseconds); an operator's close reaches every worker within it.
LOCAL_OPEN_CACHE_SECS = 0.5
# A closed breaker with no failure in its current window, read from Redis by this process, gives
# further calls their permits without reading it again for at most this long: an opening decided
# by another worker reaches this one within it (this process's own failures forget it at once).
LOCAL_CLOSED_CACHE_SECS = 0.1
# Counters of successful calls on such a reading (requests_total, window_requests) are added to
# the shared hash at most this long after the call, every waiting one in one pipeline.
COUNTS_FLUSH_SECS = 0.05
COUNTS_RETRY_SECS = 1.0  # while Redis is unreachable, the waiting counters are tried again this often
_open_seen: dict[str, tuple[float, float, bool]] = {}  # name -> (refuse locally until, retry_at, forced)
_closed_seen: dict[str, tuple[float, float, float]] = {}  # name -> (read at, reuse until, window_start)
_rejections: dict[str, int] = {}  # refusals not yet added to the shared counter
_counts: dict[str, dict[str, int]] = {}  # successes' counters not yet added to the shared hash
_counts_owner = {"pid": os.getpid(), "timer": None}  # type: dict[str, Any]
_local_lock = threading.Lock()


_generation: dict[str, int] = {}  # bumped whenever this process forgets a breaker's reading


def _forget(name: str) -> None:
    _generation[name] = _generation.get(name, 0) + 1  # a reading taken before this is not remembered
    _open_seen.pop(name, None)
    _closed_seen.pop(name, None)


def forget_local_state() -> None:
    """Drop what this process remembers about breakers (after the shared state was cleared)."""
    with _local_lock:
        _open_seen.clear()
        _closed_seen.clear()
        _rejections.clear()
        _counts.clear()
    _local.states.clear()


def _defer_counts(name: str, counts: Mapping[str, int], delay: float = COUNTS_FLUSH_SECS) -> None:
    """Add a success's counters to the shared hash within `delay` (one pipeline for all)."""
    with _local_lock:
        if _counts_owner["pid"] != os.getpid():  # forked: the parent's counts and timer are the parent's
            _counts.clear()
            _counts_owner.update(pid=os.getpid(), timer=None)
        waiting = _counts.setdefault(name, {})
        for stat, amount in counts.items():
            waiting[stat] = waiting.get(stat, 0) + amount
        if _counts_owner["timer"] is None:
            timer = threading.Timer(delay, _flush_timer)
            timer.daemon = True
            _counts_owner["timer"] = timer
            timer.start()


def _flush_timer() -> None:
    with _local_lock:
        _counts_owner["timer"] = None
    try:
        flush_counts(retry_secs=COUNTS_RETRY_SECS)
    except redis.RedisError as exc:
        log.warning("circuit breaker counters not written yet: Redis unreachable; retrying",
                    extra={"error": str(exc)[:300], "retry_secs": COUNTS_RETRY_SECS})


def _take_counts(name: str | None) -> dict[str, dict[str, int]]:
    with _local_lock:
        if _counts_owner["pid"] != os.getpid():
            _counts.clear()
            _counts_owner.update(pid=os.getpid(), timer=None)
        if name is None:
            taken = dict(_counts)
            _counts.clear()
        else:
            taken = {name: _counts.pop(name)} if name in _counts else {}
    return taken


def flush_counts(name: str | None = None, retry_secs: float = COUNTS_FLUSH_SECS) -> None:
    """Add the waiting success counters (of `name`, or of every breaker) to the shared state now,
    in one round trip. On a Redis error they wait for the next flush (in `retry_secs` at the latest)."""
    taken = _take_counts(name)
    if not taken:
        return
    store = _store()
    try:
        if isinstance(store, _RedisStore):
            pipe = store.client.pipeline(transaction=False)
            for breaker, stats in taken.items():
                for stat, amount in stats.items():
                    pipe.hincrby(KEY_PREFIX + breaker, stat, amount)
            pipe.execute()
        else:
            for breaker, stats in taken.items():
                store.add(breaker, stats)
    except Exception:
        for breaker, stats in taken.items():
            _defer_counts(breaker, stats, retry_secs)
        raise


def _flush_at_exit() -> None:
    try:
        flush_counts()
    except Exception:  # noqa: BLE001 - at exit there is nobody left to tell but the log
        log.warning("circuit breaker counters lost at exit", exc_info=True)


atexit.register(_flush_at_exit)


def _flush_rejections(store: _RedisStore | _LocalStore, name: str) -> None:
    with _local_lock:
        pending = _rejections.pop(name, 0)
    if pending:
        store.add(name, {"rejected_total": pending})


def _refuse(name: str, retry_at: float, forced: bool, now: float) -> CircuitOpen:
    with _local_lock:
        _rejections[name] = _rejections.get(name, 0) + 1
    return CircuitOpen(name, max(0.0, retry_at - now), forced)


def acquire(name: str, now: float | None = None) -> Permit:
    """Leave for one call to target `name`, or CircuitOpen / RateLimited without trying it.

    Closed costs one read (HGETALL), and none while this process's last reading of a quiet closed
    breaker is younger than LOCAL_CLOSED_CACHE_SECS; only state changes (open -> half-open, a
    trial slot) write."""
    cfg = config_of(name)
    now = time.time() if now is None else now
    seen = _open_seen.get(cfg.name)
    if seen is not None and now < seen[0]:
        raise _refuse(cfg.name, seen[1], seen[2], now)
    quiet_seen = _closed_seen.get(cfg.name)
    if quiet_seen is not None and quiet_seen[0] <= now < quiet_seen[1] and now - quiet_seen[2] < cfg.window_secs:
        _check_rate(cfg, None, False)
        return Permit(cfg.name, False, quiet_seen[2])
    store = _store()
    _flush_rejections(store, cfg.name)
    generation = _generation.get(cfg.name, 0)
    state = store.read(cfg.name)
    allowed, trial, change = _on_acquire(state, cfg, now)
    if change is not None:  # take the transition (or the trial slot) atomically, deciding on fresh state
        allowed, trial = store.update(cfg.name, lambda s: _split(_on_acquire(s, cfg, now)))
        if trial and state.get("state") == OPEN:
            _transition(cfg.name, OPEN, HALF_OPEN, "recovery timeout elapsed")
    if not allowed:
        forced = state.get("forced") == "1"
        retry_at = _f(state, "retry_at")
        if state.get("state") == OPEN:
            _open_seen[cfg.name] = (min(now + LOCAL_OPEN_CACHE_SECS, retry_at) if not forced
                                    else now + LOCAL_OPEN_CACHE_SECS, retry_at, forced)
        raise _refuse(cfg.name, retry_at, forced, now)
    _open_seen.pop(cfg.name, None)
    quiet = (state.get("state", CLOSED) == CLOSED and state.get("failures", "0") == "0" and not trial
             and now - _f(state, "window_start") < cfg.window_secs)
    if quiet and isinstance(store, _RedisStore) and _generation.get(cfg.name, 0) == generation:
        _closed_seen[cfg.name] = (now, now + LOCAL_CLOSED_CACHE_SECS, _f(state, "window_start"))
    _check_rate(cfg, store, trial)
    return Permit(cfg.name, trial, _f(state, "window_start") if quiet else None)


def _check_rate(cfg: BreakerConfig, store: _RedisStore | _LocalStore | None, trial: bool) -> None:
    if cfg.rate_limit_per_minute > 0:
        decision = limiter.check(f"breaker:{cfg.name}", cfg.rate_limit_per_minute, cfg.rate_limit_burst)
        if not decision.allowed:
            if trial and store is not None:  # give the trial slot back: the target was not tried
                store.update(cfg.name, lambda s: (None, {"trials": str(max(0, int(_f(s, "trials")) - 1))}))
            raise RateLimited(cfg.name, decision.retry_after_secs)


def _split(decision: tuple[bool, bool, State | None]) -> tuple[tuple[bool, bool], State | None]:
    return (decision[0], decision[1]), decision[2]


def record(permit: Permit, ok: bool, error: str | None = None, now: float | None = None) -> None:
    """The outcome of a permitted call. `ok` False for the target's failures (5xx, 429, timeouts,
    refused connections); a 4xx answer to a bad request is the sender's fault and counts as ok."""
    cfg = config_of(permit.name)
    now = time.time() if now is None else now
    store = _store()
    stats = {"requests_total": 1, "failed_total": 0 if ok else 1}
    if ok and permit.quiet_window is not None and now - permit.quiet_window < cfg.window_secs:
        # the common case, as below, on acquire's reading: counters only, added in batches
        if isinstance(store, _RedisStore):
            _defer_counts(cfg.name, {"requests_total": 1, "window_requests": 1})
        else:
            store.add(cfg.name, {**stats, "window_requests": 1})
        return
    if not ok:
        _forget(cfg.name)  # this process's next calls read the breaker again
        flush_counts(cfg.name)  # the window's successes so far count in the decision below
    if ok and not permit.trial:
        # the common case: a success seen in closed state only moves counters
        state = store.read(cfg.name)
        if state.get("state", CLOSED) == CLOSED and state.get("failures", "0") == "0" \
                and now - _f(state, "window_start") < cfg.window_secs:
            store.add(cfg.name, {**stats, "window_requests": 1})
            return
    seen: dict[str, State] = {}

    def change(state: State) -> tuple[None, State | None]:
        new = _on_result(state, cfg, now, ok, permit.trial, error)
        seen["before"], seen["after"] = state, state if new is None else new
        opened = new is not None and new.get("state") == OPEN and state.get("state", CLOSED) != OPEN
        stats["opened_total"] = 1 if opened else 0  # set on every (re)try of the transaction
        return None, new

    store.update(cfg.name, change, stats)
    old_state, new_state = seen["before"].get("state", CLOSED), seen["after"].get("state", CLOSED)
    if old_state != new_state:
        _forget(cfg.name)
        _transition(cfg.name, old_state, new_state, seen["after"].get("reason", ""))


def _transition(name: str, old: str, new: str, reason: str) -> None:
    log.warning("circuit breaker changed state", extra={"breaker": name, "from": old, "to": new,
                                                         "reason": reason})


def call(name: str, fn: Callable[[], T], is_failure: Callable[[T], bool] = lambda _: False) -> T:
    """Run `fn` through the breaker of `name`; exceptions count as failures and propagate."""
    permit = acquire(name)
    try:
        result = fn()
    except Exception as exc:
        record(permit, False, f"{type(exc).__name__}: {exc}"[:300])
        raise
    record(permit, not is_failure(result))
    return result


# ------------------------------------------------------------------------------- operators

def force_open(name: str, actor: str = "operator") -> dict[str, Any]:
    """Open until closed or reset by hand (maintenance)."""
    cfg = config_of(name)
    now = time.time()
    store = _store()
    _forget(cfg.name)
    store.update(cfg.name, lambda s: (None, {**_open(s, cfg, now, int(_f(s, "reopened")),
                                                     f"forced open by {actor}"), "forced": "1"}),
                 {"opened_total": 1})
    _transition(cfg.name, "?", OPEN, f"forced open by {actor}")
    return info(cfg.name)


def force_close(name: str, actor: str = "operator") -> dict[str, Any]:
    """Close now (after maintenance); the statistics stay."""
    cfg = config_of(name)
    now = time.time()
    _forget(cfg.name)
    _store().update(cfg.name, lambda s: (None, _closed(s, now, f"closed by {actor}")))
    _transition(cfg.name, "?", CLOSED, f"closed by {actor}")
    return info(cfg.name)


def reset(name: str, actor: str = "operator") -> dict[str, Any]:
    """Back to a fresh closed breaker: state and statistics cleared."""
    cfg = config_of(name)
    now = time.time()
    _forget(cfg.name)
    with _local_lock:
        _rejections.pop(cfg.name, None)
        _counts.pop(cfg.name, None)
    _store().replace(cfg.name, _closed({}, now, f"reset by {actor}"))
    log.warning("circuit breaker reset", extra={"breaker": cfg.name, "actor": actor})
    return info(cfg.name)


def _iso(ts: float) -> str | None:
    if not ts:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _describe(cfg: BreakerConfig, state: State, now: float) -> dict[str, Any]:
    current = state.get("state", CLOSED)
    total = int(_f(state, "requests_total"))
    failed = int(_f(state, "failed_total"))
    window_requests = int(_f(state, "window_requests"))
    fresh_window = now - _f(state, "window_start") < cfg.window_secs
    return {
        "name": cfg.name,
        "display_name": cfg.display_name or cfg.name,
        "state": current,
        "forced": state.get("forced") == "1",
        "reason": state.get("reason") or None,
        "failure_count": int(_f(state, "failures")),
        "success_count": int(_f(state, "successes")),
        "total_requests": total,
        "failed_requests": failed,
        "rejected_requests": int(_f(state, "rejected_total")),
        "open_count": int(_f(state, "opened_total")),
        "error_rate": round(failed / total, 4) if total else 0.0,
        "window": {"requests": window_requests if fresh_window else 0,
                   "failures": int(_f(state, "window_failures")) if fresh_window else 0,
                   "window_secs": cfg.window_secs},
        "opened_at": _iso(_f(state, "opened_at")) if current != CLOSED else None,
        "next_attempt_at": _iso(_f(state, "retry_at")) if current == OPEN and state.get("forced") != "1" else None,
        "changed_at": _iso(_f(state, "changed_at")),
        "config": {
            "failure_threshold": cfg.failure_threshold, "success_threshold": cfg.success_threshold,
            "timeout_secs": cfg.timeout_secs, "volume_threshold": cfg.volume_threshold,
            "error_rate_threshold": cfg.error_rate_threshold, "half_open_max_calls": cfg.trial_calls,
            "recovery_strategy": {**cfg.recovery_strategy.__dict__},
            "rate_limit": {"requests_per_minute": cfg.rate_limit_per_minute, "burst": cfg.rate_limit_burst},
        },
        "shared": isinstance(_store(), _RedisStore),
    }


def info(name: str) -> dict[str, Any]:
    """One breaker's state, counters and configuration."""
    cfg = config_of(name)
    store = _store()
    _flush_rejections(store, cfg.name)
    flush_counts(cfg.name)
    return _describe(cfg, store.read(cfg.name), time.time())


def list_breakers() -> list[dict[str, Any]]:
    """Every breaker, by name."""
    outbound = get_outbound_settings()
    ordered = sorted(outbound.breakers)
    now = time.time()
    store = _store()
    for name in list(_rejections):
        _flush_rejections(store, name)
    flush_counts()
    states = store.read_many(ordered)
    return [_describe(outbound.breakers[n], s, now) for n, s in zip(ordered, states, strict=True)]


def samples() -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, info) of every breaker: what /metrics exposes at scrape time."""
    for described in list_breakers():
        yield described["name"], described


class _BreakerCollector:
    """The reference README's breaker metrics, read from the shared state at scrape time (so one
    scrape shows every worker's calls). Counts run since the breaker's last reset."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        state = GaugeMetricFamily("circuit_breaker_state", "0=closed, 1=open, 2=half-open", labels=["name"])
        requests = CounterMetricFamily("circuit_breaker_requests", "Calls made through the breaker", labels=["name"])
        failed = GaugeMetricFamily("circuit_breaker_requests_failed", "Calls that failed (since reset)",
                                   labels=["name"])
        error_rate = GaugeMetricFamily("circuit_breaker_error_rate", "failed / total (since reset)", labels=["name"])
        opened = GaugeMetricFamily("circuit_breaker_open_count", "Times the breaker opened (since reset)",
                                   labels=["name"])
        rejected = GaugeMetricFamily("circuit_breaker_requests_rejected", "Calls refused while open (since reset)",
                                     labels=["name"])
        try:
            described = list_breakers()
        except redis.RedisError:
            log.warning("circuit breaker metrics unavailable: Redis unreachable", exc_info=True)
            return
        for item in described:
            name = [item["name"]]
            state.add_metric(name, STATE_CODES[item["state"]])
            requests.add_metric(name, item["total_requests"])
            failed.add_metric(name, item["failed_requests"])
            error_rate.add_metric(name, item["error_rate"])
            opened.add_metric(name, item["open_count"])
            rejected.add_metric(name, item["rejected_requests"])
        yield from (state, requests, failed, error_rate, opened, rejected)


metrics.register_scrape_collector(_BreakerCollector())
