"""`incident-manager apikey …`: API keys, stored as HMAC-SHA256 digests."""

from __future__ import annotations

import sys

import click

from cli.common import settings_or_exit

PERMISSIONS = click.Choice(["event:create", "incident:read", "incident:write", "admin"])


@click.group("apikey")
def apikey_group() -> None:
    """API keys (stored as HMAC-SHA256 digests; the key is shown once)."""


@apikey_group.command("create")
@click.option("--name", required=True)
@click.option("--permission", "permissions", multiple=True, required=True, type=PERMISSIONS)
@click.option("--rate-limit", type=click.IntRange(min=0), default=None,
              help="requests per minute (0 = no limit; default from rate_limit in the configuration)")
@click.option("--burst", type=click.IntRange(min=1), default=None)
def apikey_create(name: str, permissions: tuple[str, ...], rate_limit: int | None, burst: int | None) -> None:
    """Create a key; the key alone is the last line of stdout."""
    settings_or_exit()
    from app.services.auth import create_api_key

    created = create_api_key(name, list(permissions), rate_limit, burst)
    click.echo(f"created API key {created.id} ({created.name}) with {', '.join(created.permissions)}")
    click.echo(created.key)


@apikey_group.command("list")
def apikey_list() -> None:
    """Keys by id and prefix (a key itself cannot be shown again: create a new one)."""
    settings_or_exit()
    from app.services.auth import list_api_keys

    for key in list_api_keys():
        state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
        click.echo(f"{key.id}  im_{key.prefix}_…  {key.name:<24} {','.join(key.permissions):<40} "
                   f"{key.requests_per_minute}/min burst {key.burst}  {state}")


@apikey_group.command("revoke")
@click.argument("key_id")
def apikey_revoke(key_id: str) -> None:
    """Revoke by id or prefix (stops working everywhere within 10 s)."""
    settings_or_exit()
    from app.services.auth import revoke_api_key

    if not revoke_api_key(key_id):
        click.echo(f"no such key: {key_id}", err=True)
        sys.exit(1)
    click.echo(f"revoked {key_id}")
