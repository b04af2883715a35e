"""The worker's consumer on the embedded filesystem broker: quick to stop.

The filesystem transport has no event loop, so Celery runs its blocking `synloop`, which waits up
to 2 s in each `drain_events` call and, after a stop request, drains once more (2 s again) before
it looks at the request: an idle worker took 4-7 s to stop on SIGTERM. Here every drain waits at
most DRAIN_SECS, so a stop is seen within two of them; and once the worker has stopped (consumer
closed, pool processes gone), the process exits at once instead of joining billiard's timeout
thread (up to 1 s) and tearing down the interpreter (docs/operations.md).

Its transport writes each message whole before it can be seen: kombu's filesystem transport
creates `<ms>_<uuid>.<queue>.msg` and then writes into it, so a consumer polling the folder could
take the file while it was still empty or half written and die on its JSON (seen on the embedded
default when beat and a worker raced). Here the message is written under a name no consumer
matches and renamed into place (a rename within one folder is atomic)."""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from typing import Any

from celery import signals
from celery.worker import loops
from celery.worker.consumer import Consumer
from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

DRAIN_SECS = 0.2


class _ShortDrains:
    """The consumer's connection, with every `drain_events` wait capped at DRAIN_SECS."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def drain_events(self, timeout: float | None = None, **kwargs: Any) -> Any:
        return self._connection.drain_events(timeout=min(timeout or DRAIN_SECS, DRAIN_SECS), **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def _synloop(obj: Any, connection: Any, *args: Any, **kwargs: Any) -> Any:
    return loops.synloop(obj, _ShortDrains(connection), *args, **kwargs)


class QuickStopConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer; on a transport without an event loop, its loop drains in short waits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.loop is loops.synloop:  # type: ignore[has-type]
            self.loop = _synloop


class AtomicChannel(filesystem.Channel):  # type: ignore[misc]
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Put `payload` onto `queue`: written in full under a hidden name, then renamed to the
        name consumers look for (`<monotonic ms>_<uuid>.<queue>.msg`, kombu's own)."""
        name = f"{int(round(time.monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        partial = os.path.join(self.data_folder_out, f".partial-{uuid.uuid4()}")
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            raise ChannelError(f"Cannot add file {name!r} to directory") from exc


class AtomicFilesystemTransport(filesystem.Transport):  # type: ignore[misc]
    """kombu's filesystem transport whose messages appear only once written (the embedded default)."""

    Channel = AtomicChannel


@signals.worker_shutdown.connect
def _exit_now(sender: Any = None, **_: Any) -> None:
    # Sent after the consumer and the pool stopped: nothing is in flight any more.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(getattr(sender, "exitcode", 0) or 0))
