"""Pipeline-queue tasks: thin calls into app.services.pipeline.

`pipeline.drain` takes the outbox ids pushed since the last drain (up to PIPELINE_BATCH_SIZE
events per batch) and starts one `pipeline.batch` task per batch. The drain has the lowest priority
and no delay: on an idle pipeline it runs at once (a small batch, low latency); under load it waits
behind every queued batch while ids pile up in Redis, so batches grow with the load (backpressure).

`pipeline.batch` runs dedup -> classify -> enrich -> correlate -> route in one process
(`service.run_batch`): no serialization or broker round trip between stages (docs/pipeline.md,
"Issue 11": fused vs one task per stage, measured). Its result names each stage with its time, as
does its log line and the `processing_duration_seconds{stage}` metric. With PIPELINE_STAGE_TASKS=true
each stage is its own task instead, a chain per batch:

    pipeline.dedup -> pipeline.classify -> pipeline.enrich -> pipeline.correlate -> pipeline.route

`pipeline.process(outbox_ids)` is the path without Redis (the embedded default): one task for the
five stages. A task whose retries run out on a batch of several outbox rows restarts each row as
its own batch, so one poison event dead-letters alone and the rest of its batch goes through."""

from __future__ import annotations

import logging
from typing import Any, Callable

from celery import chain
from celery.signals import worker_process_init
from threadpoolctl import threadpool_limits

from app.adapters.redis_client import get_redis
from app.config import get_settings
from app.services import outbox
from app.services import pipeline as service
from tasks.celery_app import app
from tasks.dispatch import DRAIN_FLAG_KEY, DRAIN_FLAG_TTL_MS, PENDING_KEY, send_drain

log = logging.getLogger(__name__)


@worker_process_init.connect
def _one_blas_thread(**_kwargs: Any) -> None:
    """One BLAS thread per pool process: the pool already runs a process per core, and on a busy
    box OpenBLAS's spinning threads tripled the CPU of a similarity product (docs/pipeline.md)."""
    threadpool_limits(1)


# Later stages go first (Redis priority 0 is served before 3, 6, 9): batches in flight finish
# before new ones start, so a backlog delays new work instead of every batch's last stage. The
# drain (9, celeryconfig) comes after all of them: a batch is cut only when the workers are free.
STAGE_PRIORITY = {"pipeline.dedup": 6, "pipeline.classify": 6, "pipeline.enrich": 3, "pipeline.correlate": 0,
                  "pipeline.route": 0}


# The fused task: ahead of the drain (9), so queued batches run before a new one is cut.
BATCH_PRIORITY = 0


def _signature(name: str, *args: Any) -> Any:
    return app.signature(name, args=args, priority=STAGE_PRIORITY[name])


def start_chain(outbox_ids: list[int]) -> None:
    """Start one batch: one `pipeline.batch` task, or the chain of stage tasks (PIPELINE_STAGE_TASKS)."""
    if not get_settings().pipeline_stage_tasks:
        app.signature("pipeline.batch", args=(outbox_ids,), priority=BATCH_PRIORITY).apply_async()
        return
    chain(_signature("pipeline.dedup", outbox_ids), _signature("pipeline.classify"), _signature("pipeline.enrich"),
          _signature("pipeline.correlate"), _signature("pipeline.route")).apply_async()


@app.task(name="pipeline.drain")
def drain() -> int:
    client = get_redis()
    if client is None:
        return 0
    settings = get_settings()
    taken = 0
    while True:
        raw = client.lpop(PENDING_KEY, settings.pipeline_batch_size) or []
        started: set[int] = set()
        try:
            for group in service.pack_outbox([int(x) for x in raw], settings.pipeline_batch_size):
                start_chain(group)
                started.update(group)
        except Exception:
            # The popped ids that got no batch go back to the list (this drain is retried), instead
            # of waiting for the outbox relay (a batch run twice changes nothing the second time).
            rest = [x for x in raw if int(x) not in started]
            if rest:
                client.lpush(PENDING_KEY, *rest)
            log.warning("pipeline drain failed; ids pushed back", exc_info=True, extra={"ids": len(rest)})
            raise
        taken += len(raw)
        if len(raw) < settings.pipeline_batch_size:
            break
    # Clear the flag, then look again: a producer that pushed after our last pop either sees the
    # flag gone and schedules a drain itself, or its ids are seen here. No lost wake-ups.
    client.delete(DRAIN_FLAG_KEY)
    if client.llen(PENDING_KEY) and client.set(DRAIN_FLAG_KEY, "1", nx=True, px=DRAIN_FLAG_TTL_MS):
        send_drain()
    return taken


@app.task(name="pipeline.process", bind=True)
def process(self: Any, outbox_ids: list[int]) -> Any:
    ids = sorted(set(int(i) for i in outbox_ids))
    if get_redis() is None:
        # The embedded broker costs a polling interval and a file per hop: without Redis one task
        # runs the whole batch, same failure rules (docs/operations.md). With Redis every stage is
        # its own task, visible in Flower.
        return _stage(self, ids, _run_batch)
    start_chain(ids)
    return len(outbox_ids)


STAGE_ORDER = tuple(STAGE_PRIORITY)


def _stage(task: Any, batch_or_ids: Any, run: Callable[[Any], Any]) -> Any:
    """Run one stage. On the last attempt of a multi-row batch, split it per outbox row instead of
    failing it (one poison event then dead-letters alone); a single row out of retries is closed in
    the outbox (the relay stops re-sending it) and dead-lettered by BaseTask, replayable.
    A stage run without the rest of its chain (a dead-letter replay) starts the remaining stages."""
    try:
        result = run(batch_or_ids)
    except Exception:
        outbox_ids = batch_or_ids if isinstance(batch_or_ids, list) else batch_or_ids.get("outbox_ids", [])
        if task.request.retries >= task.max_retries:
            if len(outbox_ids) > 1:
                log.warning("pipeline stage out of retries on a batch; splitting it per outbox row",
                            extra={"task": task.name, "outbox_ids": outbox_ids[:50]})
                for outbox_id in outbox_ids:
                    start_chain([outbox_id])
                task.request.chain = None  # the rest of this chain would run on a batch we just split
                return None
            outbox.mark_done(outbox_ids)
        raise
    position = STAGE_ORDER.index(task.name) if task.name in STAGE_ORDER else len(STAGE_ORDER)
    if not task.request.chain and position + 1 < len(STAGE_ORDER):
        names = STAGE_ORDER[position + 1:]
        chain(_signature(names[0], result), *[_signature(n) for n in names[1:]]).apply_async()
    return result


def _run_batch(outbox_ids: list[int]) -> dict[str, Any]:
    result = service.run_batch(outbox_ids)
    log.info("pipeline batch stages", extra={"events": result["events"], "incidents": result["incidents"],
                                             "stages_ms": result["stages_ms"], "outbox_ids": outbox_ids[:20]})
    return result


@app.task(name="pipeline.batch", bind=True)
def batch(self: Any, outbox_ids: list[int]) -> Any:
    """One batch through every stage in this process (see the module docstring)."""
    return _stage(self, sorted(set(int(i) for i in outbox_ids)), _run_batch)


@app.task(name="pipeline.dedup", bind=True)
def dedup(self: Any, outbox_ids: list[int]) -> Any:
    return _stage(self, outbox_ids, service.deduplicate)


@app.task(name="pipeline.classify", bind=True)
def classify(self: Any, batch: dict[str, Any]) -> Any:
    return _stage(self, batch, service.classify)


@app.task(name="pipeline.enrich", bind=True)
def enrich(self: Any, batch: dict[str, Any]) -> Any:
    return _stage(self, batch, service.enrich)


@app.task(name="pipeline.correlate", bind=True)
def correlate(self: Any, batch: dict[str, Any]) -> Any:
    return _stage(self, batch, service.correlate)


@app.task(name="pipeline.route", bind=True)
def route(self: Any, batch: dict[str, Any]) -> Any:
    return _stage(self, batch, service.route_and_persist)
