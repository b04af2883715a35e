"""Engine and sessions, the autocommit connection pool of one-statement writers, and the two
rules every transaction shares: a lost deadlock or serialization race is re-run
(`retry_on_conflict`), and only an unreachable Postgres is an outage (`DatabaseUnavailable`).
Each pool is per process (created lazily, re-created after fork)."""

from __future__ import annotations

import importlib
import logging
import os
import random
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app import metrics
from app.config import Settings, get_settings

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)
T = TypeVar("T")

# Modules holding models; Alembic and the tests import them all so metadata is complete.
MODEL_MODULES = ["app.adapters.models"]

_lock = threading.Lock()
_engine: Engine | None = None
_engine_pid: int | None = None
_sessionmaker: sessionmaker[Session] | None = None


def import_all_models() -> None:
    for name in MODEL_MODULES:
        importlib.import_module(name)
    # Concept modules register themselves by living in app/adapters/*_models.py.
    here = os.path.dirname(__file__)
    for filename in sorted(os.listdir(here)):
        if filename.endswith("_models.py"):
            importlib.import_module(f"app.adapters.{filename[:-3]}")


def make_engine(settings: Settings) -> Engine:
    if settings.is_sqlite:
        path = settings.database_url[len("sqlite:///"):]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        engine = create_engine(settings.database_url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            # SQLAlchemy's recipe: let us emit BEGIN ourselves (pysqlite's own is deferred).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")  # durable: 202 means on disk
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin_immediate(conn):  # type: ignore[no-untyped-def]
            # One writer at a time: take the write lock up front instead of failing on upgrade.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def get_engine() -> Engine:
    """The process's engine; a forked child (gunicorn, Celery prefork) gets a fresh pool."""
    global _engine, _engine_pid, _sessionmaker
    pid = os.getpid()
    if _engine is None or _engine_pid != pid:
        with _lock:
            if _engine is None or _engine_pid != pid:
                if _engine is not None:
                    _engine.dispose(close=False)
                _engine = make_engine(get_settings())
                _engine_pid = pid
                _sessionmaker = sessionmaker(bind=_engine, expire_on_commit=False)
    return _engine


def reset_engine() -> None:
    global _engine, _engine_pid, _sessionmaker, _pool, _pool_pid
    with _lock:
        if _engine is not None:
            _engine.dispose()
        _engine = None
        _engine_pid = None
        _sessionmaker = None
        if _pool is not None and _pool_pid == os.getpid():
            _pool.close()
        _pool = None
        _pool_pid = None


def new_session() -> Session:
    get_engine()
    assert _sessionmaker is not None
    return _sessionmaker()


@contextmanager
def unit_of_work() -> Iterator[Session]:
    """A transaction: commits on success, rolls back on any exception."""
    session = new_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def read_session() -> Iterator[Session]:
    """A session for reads; closing ends its transaction without expiring what was loaded."""
    session = new_session()
    try:
        yield session
    finally:
        session.close()


# ------------------------------------------------------------------ outages and retried conflicts

# SQLSTATEs of a transaction that lost a race and may simply run again: deadlock_detected,
# serialization_failure. Matched by code, not by exception class or message.
RETRYABLE_SQLSTATES = {"40P01": "deadlock", "40001": "serialization"}
# Connection exceptions (class 08) and the server going away (57P01-57P03): Postgres is unreachable.
_OUTAGE_SQLSTATE_PREFIXES = ("08", "57P01", "57P02", "57P03")
RETRY_AFTER_SECS = 5  # what an outage answer tells the sender (Retry-After)


class DatabaseUnavailable(Exception):
    """Postgres cannot be reached: nothing was written; the caller may send again later."""

    retry_after_secs = RETRY_AFTER_SECS


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a psycopg error, also when SQLAlchemy wraps it."""
    for candidate in (exc, getattr(exc, "orig", None), exc.__cause__):
        code = getattr(candidate, "sqlstate", None)
        if code:
            return str(code)
    return None


def is_outage(exc: BaseException) -> bool:
    """Postgres unreachable (refused, reset, shut down), as opposed to a statement's own error."""
    import psycopg

    if isinstance(exc, DatabaseUnavailable):
        return True
    inner = getattr(exc, "orig", None) or exc
    if not isinstance(inner, psycopg.OperationalError):
        return False
    code = sqlstate(inner)
    # No SQLSTATE: the client library itself failed to connect or lost the socket.
    return code is None or code.startswith(_OUTAGE_SQLSTATE_PREFIXES)


def retry_on_conflict(operation: str, run: Callable[[], T], *, attempts: int = 6,
                      base_delay: float = 0.005, max_delay: float = 0.5) -> T:
    """Run the transaction `run` again when it lost a deadlock (40P01) or serialization race
    (40001), at most `attempts` times, sleeping a random ("full jitter") delay below an exponential
    cap in between so the contenders do not collide again in step. `run` must be a whole
    transaction (a rolled-back one is safe to repeat). Each re-run counts in
    `incident_manager_db_retries_total{operation,sqlstate}`."""
    for attempt in range(1, attempts + 1):
        try:
            return run()
        except Exception as exc:
            code = sqlstate(exc)
            if code not in RETRYABLE_SQLSTATES or attempt == attempts:
                raise
            metrics.DB_RETRIES.labels(operation=operation, sqlstate=code).inc()
            delay = random.uniform(0, min(max_delay, base_delay * 2 ** attempt))
            log.info("%s lost a %s race; re-running", operation, RETRYABLE_SQLSTATES[code],
                     extra={"operation": operation, "sqlstate": code, "attempt": attempt,
                            "delay_ms": round(delay * 1000, 1)})
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


# ----------------------------------------------------------------- autocommit pool (psycopg_pool)

_pool: ConnectionPool | None = None
_pool_pid: int | None = None
# A wait for a pooled connection longer than this checks whether Postgres is reachable at all.
PROBE_AFTER_SECS = 1.0


def _libpq_url(settings: Settings) -> str:
    return settings.database_url.replace("postgresql+psycopg://", "postgresql://", 1)


def _autocommit_pool(settings: Settings) -> ConnectionPool:
    """The process's pool of autocommit connections, at most `database_pool_size` (as SQLAlchemy's
    pool): a gevent worker serves up to 2,000 requests at once, and Postgres allows ~100
    connections. Created in the process that uses it (after fork and after gevent's patching)."""
    global _pool, _pool_pid
    pid = os.getpid()
    if _pool is None or _pool_pid != pid:
        with _lock:
            if _pool is None or _pool_pid != pid:
                from psycopg_pool import ConnectionPool

                # A forked child drops the parent's pool without closing it: the sockets are the parent's.
                _pool = ConnectionPool(
                    _libpq_url(settings), min_size=1, max_size=settings.database_pool_size,
                    kwargs={"autocommit": True, "connect_timeout": 10}, name="autocommit", open=True,
                    timeout=PROBE_AFTER_SECS, max_idle=300.0, reconnect_timeout=30.0)
                _pool_pid = pid
    return _pool


def _reachable(settings: Settings) -> bool:
    import psycopg

    try:
        psycopg.connect(_libpq_url(settings), connect_timeout=3).close()
        return True
    except psycopg.OperationalError:
        return False


@contextmanager
def autocommit_connection(operation: str, settings: Settings | None = None) -> Iterator[psycopg.Connection]:
    """A pooled autocommit connection (each statement is its own transaction). Waiting for a busy
    pool is never an error: a wait over PROBE_AFTER_SECS checks that Postgres answers at all and
    then waits on; unreachable raises DatabaseUnavailable. The wait is observed in
    `incident_manager_db_connection_wait_seconds{pool="autocommit"}` when there was one. A
    connection an error broke is discarded by the pool, and the idle ones are checked then."""
    import psycopg
    from psycopg_pool import PoolTimeout

    settings = settings or get_settings()
    pool = _autocommit_pool(settings)
    started = time.perf_counter()
    while True:
        try:
            conn = pool.getconn()
            break
        except PoolTimeout:
            if not _reachable(settings):
                metrics.DB_UNAVAILABLE.labels(operation=operation).inc()
                raise DatabaseUnavailable("the database is unreachable") from None
    waited = time.perf_counter() - started
    if waited > 0.001:
        metrics.DB_CONNECTION_WAIT.labels(pool="autocommit").observe(waited)
    try:
        yield conn
    except psycopg.OperationalError as exc:
        if is_outage(exc):
            pool.check()  # the other idle connections likely died with this one
        raise
    finally:
        pool.putconn(conn)
