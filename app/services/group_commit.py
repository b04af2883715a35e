"""Group commit: single events submitted concurrently (gRPC calls on server threads, REST requests
on one gevent worker's greenlets) share one ingest transaction. Each caller still returns only
after the transaction holding its event has committed, so the durability rule is unchanged; what
changes is that one statement carries several events (ingest's fixed cost per statement is most
of a single event's cost: measured in bench/ingest.py and bench/grpc_ingest.py)."""

from __future__ import annotations

import collections
import logging
import threading
from typing import Callable, Sequence

from app import metrics
from app.adapters.db import is_outage
from app.services.ingest import IngestResult, NewEvent

log = logging.getLogger(__name__)


class _Waiter:
    """One submitted event and the one wake-up its caller waits for: its outcome is in, or it is
    to lead the next group. A lock held from birth is the cheapest one-shot signal (one futex);
    under gevent's monkey-patching it is cooperative."""

    __slots__ = ("event", "result", "error", "lead", "_signal")

    def __init__(self, event: NewEvent) -> None:
        self.event = event
        self.result: IngestResult | None = None
        self.error: BaseException | None = None
        self.lead = False
        self._signal = threading.Lock()
        self._signal.acquire()

    def wait(self) -> None:
        self._signal.acquire()

    def wake(self) -> None:
        self._signal.release()

    def outcome(self) -> IngestResult:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class GroupCommitter:
    """Events submitted concurrently by several threads or greenlets are ingested in one
    transaction; each caller returns only after the transaction holding its event has committed.
    One caller at a time (the leader) commits its own event and whatever is pending; when it is
    done it wakes each caller of its group once, with its result, and hands the lead to the oldest
    pending caller, which commits everything that piled up meanwhile. Nobody polls and nobody is
    woken for another caller's result (the former shared condition variable woke every waiter
    after every group: 30-43 µs of CPU a submit against 17-24 µs now, 8 threads, 1.5 ms commits;
    see docs/doors.md, gRPC time budget). If a group fails, its
    events are retried one by one so one bad event cannot fail the others; an unreachable database
    fails the whole group at once. `parallel` > 1 lets
    that many groups commit at once; 1 (the default) measured best here, since groups then stay
    larger and each statement has a fixed cost."""

    def __init__(self, ingest: Callable[[Sequence[NewEvent]], list[IngestResult]], max_batch: int = 256,
                 parallel: int = 1, door: str = "") -> None:
        self._ingest = ingest
        self._group_size = metrics.INGEST_GROUP_SIZE.labels(door or "unnamed")
        self._max_batch = max_batch
        self._parallel = parallel
        self._lock = threading.Lock()
        self._pending: collections.deque[_Waiter] = collections.deque()
        self._active = 0  # leaders committing now (at most `parallel`)

    def submit(self, event: NewEvent) -> IngestResult:
        """Ingest `event` in a group; returns (or raises) once that group has committed."""
        waiter = _Waiter(event)
        with self._lock:
            if self._active < self._parallel:
                self._active += 1
                waiter.lead = True
            else:
                self._pending.append(waiter)
        if not waiter.lead:
            waiter.wait()
        if waiter.lead:
            self._lead(waiter)
        return waiter.outcome()

    def _lead(self, leader: _Waiter) -> None:
        with self._lock:
            batch = [leader]
            while self._pending and len(batch) < self._max_batch:
                batch.append(self._pending.popleft())
        successor: _Waiter | None = None
        try:
            self._commit(batch)
        finally:
            with self._lock:
                if self._pending:
                    successor = self._pending.popleft()
                    successor.lead = True
                else:
                    self._active -= 1
            # The successor first: the next commit is what the callers still queued wait for.
            if successor is not None:
                successor.wake()
            for waiter in batch:
                if waiter.result is None and waiter.error is None:  # the leader was interrupted
                    waiter.error = RuntimeError("group commit interrupted before this event's outcome")
                if waiter is not leader:
                    waiter.wake()

    def _commit(self, batch: list[_Waiter]) -> None:
        self._group_size.observe(len(batch))
        try:
            results = self._ingest([waiter.event for waiter in batch])
        except Exception as exc:
            if is_outage(exc):  # not one bad event: every event of the group gets the same answer
                for waiter in batch:
                    waiter.error = exc
                return
            log.warning("group commit failed; retrying its events one by one", exc_info=True,
                        extra={"events": len(batch)})
            for waiter in batch:
                try:
                    waiter.result = self._ingest([waiter.event])[0]
                except Exception as exc:  # this event's own failure goes to its caller
                    waiter.error = exc
            return
        for waiter, result in zip(batch, results, strict=True):
            waiter.result = result
