"""Gunicorn settings from the environment (API_HOST, API_PORT, WEB_CONCURRENCY)."""

from __future__ import annotations

import os

from app.config import get_settings

_settings = get_settings()
bind = f"{_settings.api_host}:{_settings.api_port}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "1"))
# gevent by default: a /ws/events connection is a greenlet, so idle edge agents cost little
# (docs/doors.md has the measurements); WEB_WORKER_CLASS=gthread/sync still work for HTTP only.
worker_class = os.environ.get("WEB_WORKER_CLASS", "gevent")
worker_connections = int(os.environ.get("WEB_WORKER_CONNECTIONS", "2000"))
timeout = 60
graceful_timeout = 20
keepalive = 5
accesslog = None  # the app logs requests as JSON itself
# gunicorn >= 25 opens a control socket, by default one per user ($HOME/.gunicorn/gunicorn.ctl) that
# every gunicorn of that user shares: ours is under the data directory (off when the path is too
# long for a Unix socket).
_control_socket = _settings.data_dir.resolve() / "gunicorn.ctl"
control_socket = str(_control_socket)
control_socket_disable = len(control_socket) > 100


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    from app.metrics import mark_process_dead

    mark_process_dead(worker.pid)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    # `incident-manager run` calls the web ready when every worker has loaded the app (the port
    # opens before: a first request then waited seconds for a booting worker)
    # The first hand-off to the pipeline imports the Celery app and declares its queues (about a
    # second on a busy machine, measured): do it now rather than after the first event's answer.
    from tasks.celery_app import app as celery

    try:
        with celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
            for queue in celery.amqp.queues.values():
                queue(connection.default_channel).declare()
    except Exception:  # the broker is down: the web serves anyway, the outbox relay delivers later
        worker.log.warning("broker unreachable at boot; the first hand-off will connect", exc_info=True)
    # graphene and the GraphQL schema load lazily (api/graphql/__init__.py): here, not in a request
    from api.graphql import load as load_graphql

    load_graphql()
    # The loaded app (~180,000 objects) out of the collector's reach: a 1,000-event batch allocates
    # ~30,000 objects that live for the request, which triggered a full collection walking the
    # whole heap every second or third request (docs/doors.md, "Ingest throughput": ~20 % of the
    # web's CPU per batch).
    import gc

    gc.freeze()
    ready = os.environ.get("IM_READY_FILE")
    if ready:
        with open(f"{ready}.{worker.pid}", "w") as marker:
            marker.write(str(worker.pid))
