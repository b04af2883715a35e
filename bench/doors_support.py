"""Shared set-up of the door benchmarks: a throwaway Postgres database, settings, free ports."""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psycopg

PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://root@127.0.0.1:5432/postgres")


def process_cpu_secs(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_secs(database: str) -> float:
    """CPU seconds used so far by the Postgres backends serving `database`, plus the WAL writer
    (commits of this run wait for it)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if title.startswith("postgres: ") and (f" {database} " in title or "walwriter" in title):
                total += process_cpu_secs(int(entry.name))
        except (OSError, ValueError):  # the process ended meanwhile
            continue
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def bench_environment() -> Iterator[dict[str, str]]:
    """A fresh database (dropped afterwards) and the environment every process of the run shares."""
    name = f"im_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    env = {
        "DATABASE_URL": PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}",
        "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"),
        "DATA_DIR": tempfile.mkdtemp(prefix="im-bench-"),
        "API_KEY_SECRET": secrets.token_urlsafe(32),
        "JWT_SECRET": secrets.token_urlsafe(48),
        "LOG_LEVEL": "WARNING",
    }
    env["CELERY_BROKER_URL"] = env["REDIS_URL"]
    os.environ.update(env)
    from app.adapters.migrate import upgrade

    upgrade(env["DATABASE_URL"])
    try:
        yield env
    finally:
        from app.adapters.db import reset_engine

        reset_engine()
        import redis

        redis.Redis.from_url(env["REDIS_URL"]).delete("im:pipeline:pending", "im:pipeline:drain-scheduled")
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
