"""`incident-manager flower`: the Procfile's Flower, never open without a password.

Flower reads its basic auth from `FLOWER_BASIC_AUTH` (`user:password`, comma-separated pairs). When
the configuration gives none, credentials are generated once into `DATA_DIR/flower-credentials`
(mode 0600) and reused; `incident-manager run` prints them as it prints the first API key. They
reach Flower through its environment, not its command line (`ps` shows command lines)."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

import click

from app.config import Settings
from cli.common import settings_or_exit

CREDENTIALS_FILE = "flower-credentials"
GENERATED_USER = "ops"


def flower_credentials(settings: Settings) -> tuple[str, str]:
    """(FLOWER_BASIC_AUTH value, where it comes from): the configured pairs, else the generated ones."""
    if settings.flower_basic_auth:
        return ",".join(settings.flower_basic_auth), "FLOWER_BASIC_AUTH"
    path = settings.data_dir / CREDENTIALS_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        value = f"{GENERATED_USER}:{secrets.token_urlsafe(18)}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made them first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(value + "\n")
    return path.read_text().strip(), str(path)


def describe_credentials(settings: Settings, shown: Callable[[Path], str]) -> str:
    """The `run` line about Flower's login, as for the first API key: generated credentials are shown
    when they are made (and saved in DATA_DIR), later only where they are; configured ones never."""
    existed = (settings.data_dir / CREDENTIALS_FILE).exists()
    value, source = flower_credentials(settings)
    if source == "FLOWER_BASIC_AUTH":
        return "Flower's basic auth comes from FLOWER_BASIC_AUTH"
    if existed:
        return f"Flower's login (user:password) is in {shown(Path(source))}"
    user, _, password = value.partition(":")
    return f"Flower login (shown once, saved in {shown(Path(source))}): user {user}, password {password}"


@click.command("flower", context_settings={"ignore_unknown_options": True})
@click.option("--port", type=int, default=lambda: int(os.environ.get("FLOWER_PORT", "5555")), show_default="5555",
              help="port (FLOWER_PORT)")
@click.option("--address", default=lambda: os.environ.get("FLOWER_HOST", "127.0.0.1"), show_default="127.0.0.1",
              help="bind address (FLOWER_HOST)")
def flower_command(port: int, address: str) -> None:
    """Start Flower on the configured broker, behind basic auth (FLOWER_BASIC_AUTH, else generated)."""
    settings = settings_or_exit()
    value, _ = flower_credentials(settings)
    env = {**os.environ, "FLOWER_BASIC_AUTH": value}
    command = [sys.executable, "-m", "celery", "-A", "tasks.celery_app", "flower", f"--port={port}",
               f"--address={address}"]
    os.execve(sys.executable, command, env)
