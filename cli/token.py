"""`incident-manager token …`: JWTs for WebSocket and GraphQL clients."""

from __future__ import annotations

import click

from cli.apikey import PERMISSIONS
from cli.common import settings_or_exit


@click.group("token")
def token_group() -> None:
    """JWTs for WebSocket and GraphQL clients."""


@token_group.command("create")
@click.option("--subject", required=True)
@click.option("--ttl", type=click.IntRange(min=1), default=3600, show_default=True, help="seconds")
@click.option("--permission", "permissions", multiple=True, type=PERMISSIONS)
def token_create(subject: str, ttl: int, permissions: tuple[str, ...]) -> None:
    """Print a JWT signed with the configured secret, alone on the last line."""
    settings_or_exit()
    from app.services.auth import create_token

    click.echo(f"token for {subject}, valid {ttl} s")
    click.echo(create_token(subject, ttl, list(permissions) or None))
