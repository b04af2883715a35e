"""Secrets and token checks: API_KEY_SECRET (API key hashing), JWT_SECRET / JWKS_URL / JWT_ALGORITHMS.
With none set, the embedded default keeps random secrets in DATA_DIR so they survive restarts."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Mapping

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates

from app.config.schema import CommaList, load


class _SecurityEnvSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    api_key_secret = fields.String(data_key="API_KEY_SECRET", load_default=None)
    jwt_secret = fields.String(data_key="JWT_SECRET", validate=validate.Length(min=32), load_default=None)
    jwks_url = fields.String(data_key="JWKS_URL", load_default=None)
    jwt_algorithms = CommaList(data_key="JWT_ALGORITHMS", load_default=("HS256",))

    @validates("jwt_algorithms")
    def _never_none(self, value: tuple[str, ...], **_: Any) -> None:
        if any(algorithm.lower() == "none" for algorithm in value):
            raise ValidationError("'none' is never accepted")


def _persistent_secret(data_dir: Path, name: str) -> str:
    """A random secret kept in DATA_DIR so the embedded default survives restarts."""
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


def load_security(env: Mapping[str, str], data_dir: Path) -> dict[str, Any]:
    """api_key_secret (bytes), jwt_secret, jwks_url, jwt_algorithms as Settings keyword arguments."""
    given: dict[str, Any] = load(_SecurityEnvSchema(), env)
    given["api_key_secret"] = (given["api_key_secret"] or _persistent_secret(data_dir, "api-key-secret")).encode()
    given["jwt_secret"] = given["jwt_secret"] or _persistent_secret(data_dir, "jwt-secret")
    return given
