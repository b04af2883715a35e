"""`incident-manager breakers list|show|open|close|reset`: the circuit breakers of the outbound targets
(the same service as `/v1/circuit-breakers`)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click


@click.group("breakers")
def breakers_group() -> None:
    """Circuit breakers of the outbound targets and integration clients."""


def _service() -> Any:
    from app.config import ConfigError, get_settings

    try:
        get_settings()
        from app.config.outbound import get_outbound_settings

        get_outbound_settings()
    except ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(2)
    from app.services import circuit_breakers

    return circuit_breakers


def _line(info: dict[str, Any]) -> str:
    extra = f"  next trial {info['next_attempt_at']}" if info["next_attempt_at"] else ""
    forced = " (forced)" if info["forced"] else ""
    return (f"{info['name']:<28} {info['state'] + forced:<18} requests {info['total_requests']:<8} "
            f"failed {info['failed_requests']:<8} error rate {info['error_rate'] * 100:5.1f}%  "
            f"opened {info['open_count']}x{extra}")


@breakers_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def breakers_list(as_json: bool) -> None:
    """Every breaker with its state and counters."""
    for info in _service().list_breakers():
        click.echo(json.dumps(info) if as_json else _line(info))


def _control(name: str, action: str) -> None:
    service = _service()
    change = {"show": lambda n, actor: service.info(n), "open": service.force_open,
              "close": service.force_close, "reset": service.reset}[action]
    try:
        info = change(name, actor="cli")
    except service.UnknownBreaker as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    click.echo(json.dumps(info, indent=2) if action == "show" else _line(info))


@breakers_group.command("show")
@click.argument("name")
def breakers_show(name: str) -> None:
    """One breaker in full (JSON)."""
    _control(name, "show")


@breakers_group.command("open")
@click.argument("name")
def breakers_open(name: str) -> None:
    """Force open (maintenance): calls to the target fail fast until closed or reset."""
    _control(name, "open")


@breakers_group.command("close")
@click.argument("name")
def breakers_close(name: str) -> None:
    """Force closed (after maintenance)."""
    _control(name, "close")


@breakers_group.command("reset")
@click.argument("name")
def breakers_reset(name: str) -> None:
    """Back to a fresh closed breaker, counters cleared."""
    _control(name, "reset")
