"""The doors: HTTP (API_HOST/API_PORT, body and batch limits, PUBLIC_BASE_URL), gRPC (address, TLS
and mTLS, worker threads) and WebSocket limits. docs/doors.md says what each one does."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from marshmallow import EXCLUDE, Schema, fields, validate

from app.config.schema import CommaList, ConfigError, Int, load

_PORT = validate.Range(min=1, max=65535)


class _DoorsEnvSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    api_host = fields.String(data_key="API_HOST", load_default="0.0.0.0")
    api_port = Int(data_key="API_PORT", validate=_PORT, load_default=8080)
    grpc_host = fields.String(data_key="GRPC_HOST", load_default="0.0.0.0")
    grpc_port = Int(data_key="GRPC_PORT", validate=_PORT, load_default=50051)
    public_base_url = fields.String(data_key="PUBLIC_BASE_URL", load_default=None)
    max_body_bytes = Int(data_key="MAX_BODY_BYTES", validate=validate.Range(min=1024), load_default=10 * 1024 * 1024)
    max_batch_events = Int(data_key="MAX_BATCH_EVENTS", validate=validate.Range(min=1, max=100_000), load_default=1000)
    grpc_tls_cert = fields.String(data_key="GRPC_TLS_CERT", load_default=None)
    grpc_tls_key = fields.String(data_key="GRPC_TLS_KEY", load_default=None)
    grpc_client_ca = fields.String(data_key="GRPC_CLIENT_CA", load_default=None)
    grpc_allowed_identities = CommaList(data_key="GRPC_ALLOWED_IDENTITIES", load_default=())
    grpc_max_workers = Int(data_key="GRPC_MAX_WORKERS", validate=validate.Range(min=1, max=1024), load_default=32)
    ws_max_message_bytes = Int(data_key="WS_MAX_MESSAGE_BYTES", validate=validate.Range(min=1024),
                               load_default=4 * 1024 * 1024)
    ws_idle_timeout_secs = Int(data_key="WS_IDLE_TIMEOUT_SECS", validate=validate.Range(min=1, max=86_400),
                               load_default=120)


def _check_tls(doors: Mapping[str, Any]) -> None:
    """GRPC_TLS_CERT + GRPC_TLS_KEY: TLS (callers authenticate with bearer metadata); with GRPC_CLIENT_CA
    too: mTLS, client certificates required and checked against GRPC_ALLOWED_IDENTITIES (subject CNs
    or SANs). Checked in this order so the message names the first thing to fix."""
    tls = {"GRPC_TLS_CERT": doors["grpc_tls_cert"], "GRPC_TLS_KEY": doors["grpc_tls_key"],
           "GRPC_CLIENT_CA": doors["grpc_client_ca"]}
    given = [name for name, value in tls.items() if value]
    if given and not (tls["GRPC_TLS_CERT"] and tls["GRPC_TLS_KEY"]):
        missing = sorted({"GRPC_TLS_CERT", "GRPC_TLS_KEY"} - set(given))
        raise ConfigError(f"{', '.join(missing)}: TLS needs GRPC_TLS_CERT and GRPC_TLS_KEY together")
    for name in given:
        if not Path(str(tls[name])).is_file():
            raise ConfigError(f"{name}: {tls[name]} is not a readable file")
    if tls["GRPC_CLIENT_CA"] and not doors["grpc_allowed_identities"]:
        raise ConfigError("GRPC_ALLOWED_IDENTITIES: with mTLS on, list the client identities "
                          "(certificate CN or SAN) allowed in")


def load_doors(env: Mapping[str, str]) -> dict[str, Any]:
    """The doors' settings as Settings keyword arguments."""
    doors: dict[str, Any] = load(_DoorsEnvSchema(), env)
    _check_tls(doors)
    doors["public_base_url"] = (doors["public_base_url"] or "").rstrip("/") or None
    return doors
