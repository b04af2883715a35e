"""`incident-manager`: the operators' command line, composed from one group per concept.

It is an entrypoint like `api/` and `tasks/`: each group calls the services of `app/`, and the groups
of the other layers (`grpc` from `api/`, `ml` from `ml/`) are added here. A new concept is a new
module with its `click.group` and one `add_command` line below."""

from __future__ import annotations

import click

from api.grpc.cli import grpc_group
from cli.apikey import apikey_group
from cli.breakers import breakers_group
from cli.config import config_group
from cli.db import db_group
from cli.deadletters import deadletters_group
from cli.flower import flower_command
from cli.playbook import playbook_group
from cli.run import run_command
from cli.token import token_group
from ml.cli import ml_group


@click.group()
def main() -> None:
    """Operate the LLM incident manager."""


for command in (db_group, apikey_group, token_group, deadletters_group, config_group, breakers_group, run_command,
                grpc_group, ml_group, flower_command, playbook_group):
    main.add_command(command)
