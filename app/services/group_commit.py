"""Group commit: single events submitted concurrently (gRPC calls on server threads, REST requests
on one gevent worker's greenlets) share one ingest transaction. Each caller still returns only
after the transaction holding its event has committed, so the durability rule is unchanged; what
changes is that one statement carries several events (ingest's fixed cost per statement is most
of a single event's cost: measured in bench/ingest.py and bench/grpc_ingest.py)."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Callable, Sequence

from app import metrics
from app.services.ingest import IngestResult, NewEvent

log = logging.getLogger(__name__)


class GroupCommitter:
    """Events submitted concurrently by several threads or greenlets are ingested in one
    transaction; each caller returns only after the transaction holding its event has committed.
    One caller at a time commits whatever is pending; the others wait for their result or take the
    next turn. If a group fails, its events are retried one by one so one bad event cannot fail the
    others. `parallel` > 1 lets that many groups commit at once; 1 (the default) measured best
    here, since groups then stay larger."""

    def __init__(self, ingest: Callable[[Sequence[NewEvent]], list[IngestResult]], max_batch: int = 256,
                 parallel: int = 1, door: str = "") -> None:
        self._ingest = ingest
        self._group_size = metrics.INGEST_GROUP_SIZE.labels(door or "unnamed")
        self._max_batch = max_batch
        self._parallel = parallel
        self._cond = threading.Condition()
        self._pending: list[tuple[NewEvent, Future[IngestResult]]] = []
        self._active = 0

    def submit(self, event: NewEvent) -> IngestResult:
        future: Future[IngestResult] = Future()
        with self._cond:
            self._pending.append((event, future))
        while True:
            with self._cond:
                if future.done():
                    break
                if self._active >= self._parallel or not self._pending:
                    self._cond.wait(timeout=0.05)
                    continue
                self._active += 1
                batch = self._pending[:self._max_batch]
                del self._pending[:self._max_batch]
            try:
                self._commit(batch)
            finally:
                with self._cond:
                    self._active -= 1
                    self._cond.notify_all()
        return future.result()

    def _commit(self, batch: list[tuple[NewEvent, "Future[IngestResult]"]]) -> None:
        if not batch:
            return
        self._group_size.observe(len(batch))
        try:
            results = self._ingest([event for event, _ in batch])
        except Exception:
            log.warning("group commit failed; retrying its events one by one", exc_info=True,
                        extra={"events": len(batch)})
            for event, future in batch:
                try:
                    future.set_result(self._ingest([event])[0])
                except Exception as exc:  # this event's own failure goes to its caller
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)
