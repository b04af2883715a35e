"""`incident-manager ml …`: list, activate, rollback, train, bootstrap."""

from __future__ import annotations

import json
import sys

import click


@click.group("ml")
def ml_group() -> None:
    """ML classifier: model versions, training, rollback."""


def _settings() -> None:
    from app.config import ConfigError, get_settings

    try:
        get_settings()
    except ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(2)


@ml_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def ml_list(as_json: bool) -> None:
    """Model versions, newest first."""
    _settings()
    from ml.registry import list_versions

    for row in list_versions():
        if as_json:
            click.echo(json.dumps(row))
            continue
        metrics = row["metrics"] or {}
        click.echo(f"{'*' if row['active'] else ' '} {row['version']:<24} {row['status']:<11} "
                   f"macro-F1 {row['held_out_score']:.4f}  category-F1 {metrics.get('category_macro_f1', 0):.4f}  "
                   f"trained {row['trained_at'][:19]}  size {row['training_size']} "
                   f"(+{row['feedback_samples']} samples)  {row['notes'] or ''}".rstrip())


@ml_group.command("activate")
@click.argument("version")
def ml_activate(version: str) -> None:
    """Make VERSION the active model (its file is verified first)."""
    _settings()
    from ml.registry import ModelLoadError, RegistryError, activate

    try:
        row = activate(version, actor="cli")
    except (RegistryError, ModelLoadError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"active model: {row['version']} (held-out macro-F1 {row['held_out_score']:.4f})")


@ml_group.command("rollback")
def ml_rollback() -> None:
    """Go back to the previously active version."""
    _settings()
    from ml.registry import RegistryError, rollback

    try:
        row = rollback(actor="cli")
    except RegistryError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"rolled back; active model: {row['version']}")


@ml_group.command("train")
@click.option("--force", is_flag=True, help="activate even when the held-out score is worse than the active model's")
def ml_train(force: bool) -> None:
    """Train a new version now from the shipped data and every training sample."""
    _settings()
    from ml.training import TrainingBusy, train_new_version

    try:
        result = train_new_version(trigger="cli", actor="cli", force=force)
    except TrainingBusy as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    state = "activated" if result.activated else "NOT activated"
    click.echo(f"trained {result.version} in {result.seconds:.1f} s on {result.training_size} examples "
               f"({result.samples} samples, {result.new_samples} new): {state} ({result.reason})")


@ml_group.command("bootstrap")
def ml_bootstrap() -> None:
    """Train and activate the first model from the shipped data if no version exists."""
    _settings()
    from ml.training import bootstrap

    result = bootstrap()
    if result is None:
        click.echo("a model version already exists; nothing to do")
    else:
        click.echo(f"first model {result.version} trained in {result.seconds:.1f} s "
                   f"(held-out macro-F1 {result.score:.4f}) and activated")
