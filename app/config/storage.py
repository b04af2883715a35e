"""Where state lives: DATA_DIR, the database (DATABASE_URL > `storage` in config.yaml > the embedded
SQLite file), Redis and the Celery broker (CELERY_BROKER_URL > REDIS_URL > the filesystem broker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates

from app.config.schema import ConfigError, Int, load


class _StorageSchema(Schema):
    """config.yaml `storage` (the reference README's keys)."""

    class Meta:
        unknown = RAISE

    type = fields.String(validate=validate.OneOf(["postgresql", "memory"]), load_default="postgresql")
    connection_string = fields.String(load_default=None)
    pool_size = Int(validate=validate.Range(min=1), load_default=10)


class _StorageEnvSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    data_dir = fields.String(data_key="DATA_DIR", load_default="var")
    database_url = fields.String(data_key="DATABASE_URL", load_default=None)
    database_pool_size = Int(data_key="DATABASE_POOL_SIZE", validate=validate.Range(min=1), load_default=None)
    redis_url = fields.String(data_key="REDIS_URL", load_default=None)
    broker_url = fields.String(data_key="CELERY_BROKER_URL", load_default=None)

    @validates("redis_url")
    def _redis_scheme(self, value: str | None, **_: Any) -> None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValidationError("expected redis://host:port/db")


def _database_url(url: str) -> str:
    """postgres:// and postgresql:// mean psycopg 3; anything but Postgres or SQLite is refused."""
    for alias in ("postgres://", "postgresql://"):
        if url.startswith(alias):
            url = "postgresql+psycopg://" + url[len(alias):]
    if not url.startswith(("postgresql+psycopg://", "sqlite:///")):
        raise ConfigError(f"DATABASE_URL: expected postgresql://… or sqlite:///…, got {url.split(':')[0]}://…")
    return url


def load_storage(tree: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """data_dir, database_url, database_pool_size, redis_url, broker_url (Settings keyword arguments)."""
    given = load(_StorageEnvSchema(), env)
    storage = load(_StorageSchema(), tree.get("storage") or {}, "storage")
    data_dir = Path(given["data_dir"]).resolve()
    database_url = given["database_url"] or (storage["connection_string"] if storage["type"] != "memory" else None)
    return {
        "data_dir": data_dir,
        "database_url": _database_url(database_url or f"sqlite:///{data_dir / 'incident-manager.db'}"),
        "database_pool_size": given["database_pool_size"] or storage["pool_size"],
        "redis_url": given["redis_url"],
        "broker_url": given["broker_url"] or given["redis_url"] or "filesystem://",
    }
