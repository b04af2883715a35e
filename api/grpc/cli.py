"""`incident-manager grpc ...`: run the gRPC server (the Procfile's `grpc`), regenerate its code."""

from __future__ import annotations

import sys

import click

from app.config import ConfigError, get_settings


@click.group("grpc")
def grpc_group() -> None:
    """The gRPC door (incident_manager.IncidentService)."""


@grpc_group.command("serve")
@click.option("--address", default=None, help="host:port to bind (default GRPC_HOST:GRPC_PORT)")
def serve_command(address: str | None) -> None:
    """Serve IncidentService, health and reflection until SIGTERM."""
    try:
        settings = get_settings()
    except ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(2)
    from app.logging import configure_logging

    configure_logging(settings.log_level)
    from api.grpc.server import serve

    serve(settings, address)


@grpc_group.command("codegen")
def codegen_command() -> None:
    """(Re)generate proto/incident_manager_pb2*.py from proto/incident_manager.proto."""
    import proto

    for name in proto.GENERATED:
        (proto.HERE / name).unlink(missing_ok=True)
    proto.generate()
    click.echo(f"generated {', '.join(proto.GENERATED)} in {proto.HERE}")
