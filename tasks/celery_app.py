"""The Celery application. Workers: `celery -A tasks.celery_app worker -Q ingest,pipeline,...`."""

from __future__ import annotations

import gc
import logging
import os
import time
from typing import Any

from celery import Celery, Task, signals

from app import metrics
from app.logging import configure_logging

app = Celery("incident_manager")
app.config_from_object("celeryconfig")

TASK_MODULES = ["tasks.ingest", "tasks.pipeline", "tasks.ops", "tasks.ml", "tasks.escalation", "tasks.notifications",
                "tasks.playbooks"]
app.conf.imports = tuple(TASK_MODULES) + tuple(
    m for m in os.environ.get("IM_EXTRA_TASK_MODULES", "").split(",") if m
)

log = logging.getLogger(__name__)
_started: dict[str, float] = {}


class BaseTask(Task):  # type: ignore[misc]
    """Retries with exponential backoff and jitter; after the budget the call becomes a dead letter."""

    autoretry_for = (Exception,)
    retry_backoff = True
    retry_backoff_max = 60
    retry_jitter = True
    acks_late = True
    reject_on_worker_lost = True

    @property
    def max_retries(self) -> int:  # type: ignore[override]
        from app.config import get_settings

        return get_settings().task_max_retries

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        from app.services.deadletters import record_dead_letter

        queue = (self.request.delivery_info or {}).get("routing_key")
        record_dead_letter(self.name, queue, list(args or []), dict(kwargs or {}), exc, str(einfo),
                           attempts=self.request.retries + 1)
        metrics.DEAD_LETTERS.labels(task=self.name).inc()
        log.error("task out of retries; dead-lettered", extra={"task": self.name, "task_id": task_id})


app.Task = BaseTask


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    configure_logging()


@signals.before_task_publish.connect
def _stamp_published_at(headers: dict[str, Any] | None = None, **_: Any) -> None:
    # the oldest waiting message's age (/health, /metrics) is read from this header (tasks.queue)
    if headers is not None:
        headers["published_at"] = time.time()


@signals.task_prerun.connect
def _task_started(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        _started[task_id] = time.perf_counter()


@signals.task_postrun.connect
def _task_finished(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    started = _started.pop(task_id or "", None)
    if started is not None and task is not None:
        metrics.TASK_DURATION.labels(task=task.name).observe(time.perf_counter() - started)


@signals.worker_process_shutdown.connect
def _worker_process_gone(pid: int | None = None, **_: Any) -> None:
    metrics.mark_process_dead(pid or os.getpid())


def _mark_ready() -> None:
    # `incident-manager run` waits for this file to say the process is ready (cli/run.py)
    path = os.environ.get("IM_READY_FILE")
    if path:
        with open(path, "w") as ready:
            ready.write(str(os.getpid()))


@signals.worker_init.connect
def _load_model_before_fork(**_: Any) -> None:
    # Load the active model in the main process, before the pool forks: every pool process starts
    # with it, so the first batch does not wait seconds for joblib (the embedded default's < 1 s).
    from ml.interface import get_classifier

    try:
        get_classifier()
    except Exception:  # the classify stage loads it again (and falls back to rules) if this fails
        log.warning("model not preloaded; the first batch will load it", exc_info=True)
    # What is loaded now lives as long as the process: out of the collector's reach, it is shared
    # copy-on-write by the pool and not walked again at exit (an idle worker's SIGTERM took seconds
    # of "Garbage-collecting" at interpreter exit).
    gc.freeze()


@signals.worker_ready.connect
def _worker_ready(**_: Any) -> None:
    _mark_ready()


@signals.beat_init.connect
def _beat_ready(**_: Any) -> None:
    _mark_ready()


@signals.worker_ready.connect
def _worker_metrics_server(**_: Any) -> None:
    from app.config import get_settings

    port = get_settings().worker_metrics_port
    if port:
        from prometheus_client import start_http_server

        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import CollectorRegistry, multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            start_http_server(port, registry=registry)
        else:
            start_http_server(port)
