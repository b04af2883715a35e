"""Engine and sessions. One engine per process (created lazily, re-created after fork)."""

from __future__ import annotations

import importlib
import os
import threading
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings, get_settings

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
    global _engine, _engine_pid, _sessionmaker
    with _lock:
        if _engine is not None:
            _engine.dispose()
        _engine = None
        _engine_pid = None
        _sessionmaker = None


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
