"""JSON structured logs with request/task ids; secrets are redacted."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from typing import Any

from app.domain.times import iso_from_epoch

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

SENSITIVE_KEYS = re.compile(r"(api[_-]?key|token|secret|password|authorization|encrypted_payload|routing_key)", re.I)
KEY_PATTERN = re.compile(r"im_[0-9a-f]{8}_[A-Za-z0-9_\-]{20,}")
JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "[REDACTED]" if SENSITIVE_KEYS.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return JWT_PATTERN.sub("[REDACTED]", KEY_PATTERN.sub("[REDACTED]", value))
    return value


class JsonFormatter(logging.Formatter):
    def __init__(self, instance: str | None = None) -> None:
        super().__init__()
        self.instance = instance  # `instance_id`: tells apart the lines of several deployments

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": iso_from_epoch(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if self.instance:
            entry["instance"] = self.instance
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = "[REDACTED]" if SENSITIVE_KEYS.search(key) else redact(value)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure_logging(level: str | None = None) -> None:
    from app.config import get_settings

    handler = logging.StreamHandler(sys.stderr)
    settings = get_settings()
    handler.setFormatter(JsonFormatter(settings.instance_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or settings.log_level)
    for noisy in ("werkzeug", "urllib3", "kombu", "amqp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
