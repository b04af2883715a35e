"""Secrets and token checks: API_KEY_SECRET (API key hashing), JWT_SECRET / JWKS_URL / JWT_ALGORITHMS,
FLOWER_BASIC_AUTH (Flower's `user:password` pairs). With none set, the embedded default keeps random
secrets in DATA_DIR so they survive restarts (Flower's: `incident-manager flower` makes them, cli/flower.py)."""

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
    flower_basic_auth = CommaList(data_key="FLOWER_BASIC_AUTH", load_default=None)

    @validates("jwt_algorithms")
    def _never_none(self, value: tuple[str, ...], **_: Any) -> None:
        if any(algorithm.lower() == "none" for algorithm in value):
            raise ValidationError("'none' is never accepted")

    @validates("flower_basic_auth")
    def _user_and_password(self, value: tuple[str, ...], **_: Any) -> None:
        for pair in value or ():
            user, _sep, password = pair.partition(":")
            if not user or not password:
                raise ValidationError("expected user:password pairs, comma-separated (e.g. ops:s3cret)")


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
