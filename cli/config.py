"""`incident-manager config …`: users, teams, on-call schedules and escalation policies from YAML."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cli.common import settings_or_exit


@click.group("config")
def config_group() -> None:
    """Users, teams, on-call schedules and escalation policies (docs/escalation.md)."""


@config_group.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def config_import(path: Path) -> None:
    """Upsert the objects of a YAML file by name, all or nothing; importing it again changes nothing."""
    settings_or_exit()
    from app.services import escalation_config

    try:
        result = escalation_config.import_yaml(path.read_text())
    except escalation_config.ImportError_ as exc:
        click.echo(f"nothing imported: {exc}", err=True)
        click.echo(json.dumps(exc.details, indent=2, default=str), err=True)
        sys.exit(1)
    click.echo(json.dumps({"created": result.created, "updated": result.updated, "unchanged": result.unchanged}))
