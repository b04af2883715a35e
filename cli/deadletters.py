"""`incident-manager deadletters …`: task calls that ran out of retries."""

from __future__ import annotations

import json

import click

from cli.common import settings_or_exit


@click.group("deadletters")
def deadletters_group() -> None:
    """Task calls that ran out of retries."""


@deadletters_group.command("list")
@click.option("--all", "include_replayed", is_flag=True, help="include replayed ones")
def deadletters_list(include_replayed: bool) -> None:
    """One JSON object per dead letter, newest first."""
    settings_or_exit()
    from app.services.deadletters import list_dead_letters

    for row in list_dead_letters(include_replayed):
        click.echo(json.dumps({"id": row.id, "task": row.task_name, "queue": row.queue, "error": row.error,
                               "attempts": row.attempts, "created_at": row.created_at.isoformat(),
                               "replayed_at": row.replayed_at.isoformat() if row.replayed_at else None}))


@deadletters_group.command("replay")
@click.argument("ids", nargs=-1, type=int)
def deadletters_replay(ids: tuple[int, ...]) -> None:
    """Send dead-lettered calls again (all unreplayed when no ids are given)."""
    settings_or_exit()
    from app.services.deadletters import replay_dead_letters
    from tasks.queue import celery_task_queue

    replayed = replay_dead_letters(celery_task_queue(), list(ids))
    click.echo(f"replayed {len(replayed)}: {replayed}")
