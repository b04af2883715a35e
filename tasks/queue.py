"""The Celery implementation of `app.services.task_queue.TaskQueue`.

Queue depth and the oldest waiting message are read where the broker keeps them:
- Redis: one list per queue and priority step (kombu's `queue`, `queue\\x06\\x163`, `…6`, `…9`),
  pushed on the left and taken from the right, so the oldest message is at index -1; its age comes
  from the `published_at` header every publisher adds (`tasks.celery_app`).
- the embedded filesystem broker: one file per message, named `<monotonic ms>_<uuid>.<queue>.msg`
  by kombu, so one directory listing gives every queue's depth and oldest age.
- RabbitMQ (`amqp://`): the depth from a passive declare (`_amqp_stats`); the oldest message's age
  is unknown (None) while a queue holds messages: reading it would mean taking a message.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from celery import Celery

from app.services.task_queue import QueueStats

PUBLISHED_AT_HEADER = "published_at"
# kombu's Redis transport: the priority steps of `queue_order_strategy: priority` and their separator
_REDIS_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


class CeleryTaskQueue:
    def __init__(self, app: Celery) -> None:
        self._app = app

    @property
    def queue_names(self) -> list[str]:
        return [queue.name for queue in self._app.conf.task_queues]

    @property
    def transport(self) -> str:
        return str(self._app.conf.broker_url).split(":", 1)[0]

    def _filesystem_folder(self) -> Path:
        return Path(self._app.conf.broker_transport_options["data_folder_in"])

    def send(self, task_name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        self._app.send_task(task_name, args=args, kwargs=kwargs)

    def broker_status(self) -> dict[str, Any]:
        if self.transport == "filesystem":
            folder = self._filesystem_folder()
            up = folder.is_dir() and os.access(folder, os.W_OK)
            return {"status": "up" if up else "down", "transport": "filesystem"}
        started = time.perf_counter()
        try:
            with self._app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
        except Exception as exc:  # any failure to reach the broker is "down", reported by type
            return {"status": "down", "transport": self.transport, "error": type(exc).__name__}
        return {"status": "up", "transport": self.transport,
                "latency_ms": round((time.perf_counter() - started) * 1000, 2)}

    def ping_workers(self, timeout: float) -> list[str]:
        replies = self._app.control.ping(timeout=timeout) or []
        return sorted(name for reply in replies for name in reply)

    def queue_stats(self) -> dict[str, QueueStats]:
        if self.transport == "filesystem":
            return _filesystem_stats(self._filesystem_folder(), self.queue_names)
        with self._app.connection_for_read() as conn:
            if self.transport in ("redis", "rediss"):
                return _redis_stats(conn.default_channel.client, self.queue_names)
            return _amqp_stats(conn, self.queue_names)


def _filesystem_stats(folder: Path, queues: Iterable[str]) -> dict[str, QueueStats]:
    now_ms = time.monotonic() * 1000
    stats: dict[str, QueueStats] = {name: {"depth": 0, "oldest_age_seconds": None} for name in queues}
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return stats
    for filename in names:
        stamp, _, rest = filename.partition("_")
        queue = rest.partition(".")[2].removesuffix(".msg")
        entry = stats.get(queue)
        if entry is None or not stamp.isdigit():
            continue
        entry["depth"] += 1
        age = max(0.0, (now_ms - int(stamp)) / 1000)
        if entry["oldest_age_seconds"] is None or age > entry["oldest_age_seconds"]:
            entry["oldest_age_seconds"] = round(age, 3)
    return stats


def _redis_stats(client: Any, queues: list[str]) -> dict[str, QueueStats]:
    pipe = client.pipeline(transaction=False)
    keys = [f"{queue}{suffix}" for queue in queues for suffix in _REDIS_PRIORITY_SUFFIXES]
    for key in keys:
        pipe.llen(key)
        pipe.lindex(key, -1)
    values = pipe.execute()
    now = time.time()
    stats: dict[str, QueueStats] = {}
    per_queue = len(_REDIS_PRIORITY_SUFFIXES)
    for i, queue in enumerate(queues):
        depth, oldest = 0, None
        for j in range(per_queue):
            length, last = values[(i * per_queue + j) * 2], values[(i * per_queue + j) * 2 + 1]
            depth += int(length)
            published = _published_at(last)
            if published is not None and (oldest is None or published < oldest):
                oldest = published
        stats[queue] = {"depth": depth,
                        "oldest_age_seconds": round(max(0.0, now - oldest), 3) if oldest is not None else None}
    return stats


def _amqp_stats(conn: Any, queues: list[str]) -> dict[str, QueueStats]:
    """RabbitMQ: a passive declare answers a queue's ready-message count without touching a message.
    A queue nobody declared yet (no worker consumed it, nothing was sent) is empty; the broker
    answers that with a channel error (404), which closes the channel, so the next queue gets a
    new one. The oldest message's age would need a message read: unknown (None)."""
    from amqp.exceptions import NotFound

    stats: dict[str, QueueStats] = {}
    channel = conn.channel()
    try:
        for name in queues:
            try:
                declared = channel.queue_declare(queue=name, passive=True)
            except NotFound:
                stats[name] = {"depth": 0, "oldest_age_seconds": None}
                channel = conn.channel()
                continue
            depth = int(declared.message_count)
            stats[name] = {"depth": depth, "oldest_age_seconds": None}
    finally:
        channel.close()
    return stats


def _published_at(raw: bytes | None) -> float | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)["headers"].get(PUBLISHED_AT_HEADER)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # a message some other publisher wrote: its depth counts, its age is unknown
    return float(value) if isinstance(value, (int, float)) else None


_queue: CeleryTaskQueue | None = None


def celery_task_queue() -> CeleryTaskQueue:
    """The process's adapter over `tasks.celery_app.app`."""
    global _queue
    if _queue is None:
        from tasks.celery_app import app

        _queue = CeleryTaskQueue(app)
    return _queue
