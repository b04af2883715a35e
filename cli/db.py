"""`incident-manager db …`: the database schema."""

from __future__ import annotations

import click

from cli.common import safe_url, settings_or_exit


@click.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@click.option("--revision", default="heads", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply Alembic migrations (the Procfile's `release`)."""
    settings = settings_or_exit()
    from app.adapters.migrate import upgrade

    upgrade(settings.database_url, revision)
    click.echo(f"database at {revision}: {safe_url(settings.database_url)}")
