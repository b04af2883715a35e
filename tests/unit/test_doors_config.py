"""The doors' settings: clear ConfigError messages naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ConfigError, load_settings

BASE = {"DATA_DIR": "/tmp/im-unit-doors", "JWT_SECRET": "x" * 40, "API_KEY_SECRET": "y" * 40}


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "file.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def test_defaults():
    settings = load_settings(BASE)
    assert (settings.grpc_tls_cert, settings.grpc_client_ca, settings.grpc_max_workers) == (None, None, 32)
    assert (settings.ws_max_message_bytes, settings.ws_idle_timeout_secs) == (4 * 1024 * 1024, 120)


@pytest.mark.parametrize("extra, key", [
    ({"GRPC_TLS_CERT": "PEM"}, "GRPC_TLS_KEY"),
    ({"GRPC_TLS_KEY": "PEM"}, "GRPC_TLS_CERT"),
    ({"GRPC_CLIENT_CA": "PEM"}, "GRPC_TLS_CERT"),
    ({"GRPC_TLS_CERT": "PEM", "GRPC_TLS_KEY": "PEM", "GRPC_CLIENT_CA": "PEM"}, "GRPC_ALLOWED_IDENTITIES"),
    ({"GRPC_TLS_CERT": "/nonexistent.pem", "GRPC_TLS_KEY": "PEM"}, "GRPC_TLS_CERT"),
    ({"WS_MAX_MESSAGE_BYTES": "10"}, "WS_MAX_MESSAGE_BYTES"),
    ({"WS_IDLE_TIMEOUT_SECS": "soon"}, "WS_IDLE_TIMEOUT_SECS"),
    ({"GRPC_MAX_WORKERS": "0"}, "GRPC_MAX_WORKERS"),
])
def test_errors_name_the_key(pem, extra, key):
    env = {**BASE, **{k: str(pem) if v == "PEM" else v for k, v in extra.items()}}
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert str(info.value).startswith(key)


def test_mtls_settings(pem):
    settings = load_settings({**BASE, "GRPC_TLS_CERT": str(pem), "GRPC_TLS_KEY": str(pem), "GRPC_CLIENT_CA": str(pem),
                              "GRPC_ALLOWED_IDENTITIES": "llm-shield, shield.internal"})
    assert settings.grpc_allowed_identities == ("llm-shield", "shield.internal")
