"""`incident-manager`: the operators' command line."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import click

from app.config import ConfigError, get_settings

ROOT = Path(__file__).resolve().parent.parent


def _settings_or_exit():  # type: ignore[no-untyped-def]
    try:
        return get_settings()
    except ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(2)


@click.group()
def main() -> None:
    """Operate the LLM incident manager."""


# ---------------------------------------------------------------------------------------- db

@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="heads", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply Alembic migrations (the Procfile's `release`)."""
    settings = _settings_or_exit()
    from app.adapters.migrate import upgrade

    upgrade(settings.database_url, revision)
    click.echo(f"database at {revision}: {_safe_url(settings.database_url)}")


def _safe_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


# ---------------------------------------------------------------------------------------- keys

@main.group()
def apikey() -> None:
    """API keys (stored as HMAC-SHA256 digests; the key is shown once)."""


@apikey.command("create")
@click.option("--name", required=True)
@click.option("--permission", "permissions", multiple=True, required=True,
              type=click.Choice(["event:create", "incident:read", "incident:write", "admin"]))
@click.option("--rate-limit", type=click.IntRange(min=0), default=None,
              help="requests per minute (0 = no limit; default from rate_limit in the configuration)")
@click.option("--burst", type=click.IntRange(min=1), default=None)
def apikey_create(name: str, permissions: tuple[str, ...], rate_limit: int | None, burst: int | None) -> None:
    """Create a key; the key alone is the last line of stdout."""
    _settings_or_exit()
    from app.services.auth import create_api_key

    created = create_api_key(name, list(permissions), rate_limit, burst)
    click.echo(f"created API key {created.id} ({created.name}) with {', '.join(created.permissions)}")
    click.echo(created.key)


@apikey.command("list")
def apikey_list() -> None:
    _settings_or_exit()
    from app.services.auth import list_api_keys

    for key in list_api_keys():
        state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
        click.echo(f"{key.id}  im_{key.prefix}_…  {key.name:<24} {','.join(key.permissions):<40} "
                   f"{key.requests_per_minute}/min burst {key.burst}  {state}")


@apikey.command("revoke")
@click.argument("key_id")
def apikey_revoke(key_id: str) -> None:
    """Revoke by id or prefix (stops working everywhere within 10 s)."""
    _settings_or_exit()
    from app.services.auth import revoke_api_key

    if not revoke_api_key(key_id):
        click.echo(f"no such key: {key_id}", err=True)
        sys.exit(1)
    click.echo(f"revoked {key_id}")


@main.group()
def token() -> None:
    """JWTs for WebSocket and GraphQL clients."""


@token.command("create")
@click.option("--subject", required=True)
@click.option("--ttl", type=click.IntRange(min=1), default=3600, show_default=True, help="seconds")
@click.option("--permission", "permissions", multiple=True,
              type=click.Choice(["event:create", "incident:read", "incident:write", "admin"]))
def token_create(subject: str, ttl: int, permissions: tuple[str, ...]) -> None:
    """Print a JWT signed with the configured secret, alone on the last line."""
    _settings_or_exit()
    from app.services.auth import create_token

    click.echo(f"token for {subject}, valid {ttl} s")
    click.echo(create_token(subject, ttl, list(permissions) or None))


# ---------------------------------------------------------------------------------------- dead letters

@main.group()
def deadletters() -> None:
    """Task calls that ran out of retries."""


@deadletters.command("list")
@click.option("--all", "include_replayed", is_flag=True, help="include replayed ones")
def deadletters_list(include_replayed: bool) -> None:
    _settings_or_exit()
    from app.services.deadletters import list_dead_letters

    for row in list_dead_letters(include_replayed):
        click.echo(json.dumps({"id": row.id, "task": row.task_name, "queue": row.queue, "error": row.error,
                               "attempts": row.attempts, "created_at": row.created_at.isoformat(),
                               "replayed_at": row.replayed_at.isoformat() if row.replayed_at else None}))


@deadletters.command("replay")
@click.argument("ids", nargs=-1, type=int)
def deadletters_replay(ids: tuple[int, ...]) -> None:
    """Send dead-lettered calls again (all unreplayed when no ids are given)."""
    _settings_or_exit()
    from app.services.deadletters import replay_dead_letters

    replayed = replay_dead_letters(list(ids))
    click.echo(f"replayed {len(replayed)}: {replayed}")


# ---------------------------------------------------------------------------------------- run

@main.command("run")
@click.option("--processes", default="web,worker,beat,grpc,flower", show_default=True,
              help="comma-separated Procfile processes to start")
def run(processes: str) -> None:
    """Migrate, make sure an API key exists, and start every process of the Procfile."""
    settings = _settings_or_exit()
    from honcho.manager import Manager

    from app.adapters.migrate import upgrade
    from app.services.auth import create_api_key, list_api_keys

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    from ml.training import bootstrap as bootstrap_ml  # first start: train the first model from the shipped data

    bootstrap_ml()
    env = dict(os.environ)
    # The Procfile's commands (gunicorn, celery) live beside this interpreter, venv or not.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env.setdefault("DATA_DIR", str(settings.data_dir))
    metrics_dir = Path(env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(settings.data_dir / "metrics")))
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    (settings.data_dir / "broker").mkdir(exist_ok=True)
    (settings.data_dir / "broker-control").mkdir(exist_ok=True)

    port = settings.api_port
    click.echo(f"LLM incident manager: database {_safe_url(settings.database_url)}, broker {settings.broker_url}")
    key_line = "use a key from `incident-manager apikey list` (keys are shown only when created)"
    if not any(k.revoked_at is None for k in list_api_keys()):
        created = create_api_key("first-admin", ["admin"])
        key_line = f"API key (admin, shown once): {created.key}"
        (settings.data_dir / "first-api-key").write_text(created.key + "\n")
        os.chmod(settings.data_dir / "first-api-key", 0o600)
    click.echo(key_line)
    click.echo(f"Send the first event:  POST http://localhost:{port}/api/v1/events/sentinel  (header X-API-Key)")
    click.echo(f"Flower: http://localhost:{env.get('FLOWER_PORT', '5555')}   gRPC: localhost:{settings.grpc_port}")

    wanted = [p.strip() for p in processes.split(",") if p.strip()]
    procfile = _read_procfile(ROOT / "Procfile")
    manager = Manager()
    for name in wanted:
        if name in procfile:
            manager.add_process(name, procfile[name], cwd=str(ROOT), env=env)
    manager.loop()
    sys.exit(manager.returncode)


def _read_procfile(path: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and ":" in line:
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


# ---------------------------------------------------------------------------------------- config

@main.group("config")
def config_group() -> None:
    """Users, teams, on-call schedules and escalation policies (docs/escalation.md)."""


@config_group.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def config_import(path: Path) -> None:
    """Upsert the objects of a YAML file by name, all or nothing; importing it again changes nothing."""
    _settings_or_exit()
    from app.services import escalation_config

    try:
        result = escalation_config.import_yaml(path.read_text())
    except escalation_config.ImportError_ as exc:
        click.echo(f"nothing imported: {exc}", err=True)
        click.echo(json.dumps(exc.details, indent=2, default=str), err=True)
        sys.exit(1)
    click.echo(json.dumps({"created": result.created, "updated": result.updated, "unchanged": result.unchanged}))


from api.grpc.cli import grpc_group  # noqa: E402  (the gRPC door's commands)

main.add_command(grpc_group)

from ml.cli import ml_group  # noqa: E402

main.add_command(ml_group)

from app.breakers_cli import breakers_group  # noqa: E402

main.add_command(breakers_group)


if __name__ == "__main__":
    main()
