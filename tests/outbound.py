"""Shared set-up of the outbound tests: a config.yaml for the test, and clean breaker state."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import redis as redis_lib
import yaml


def _reset() -> None:
    from app.config import reset_settings_cache

    reset_settings_cache()


@pytest.fixture
def outbound_config(test_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Path]]:
    """outbound_config({...}) writes the tree as this test's config.yaml (CONFIG_FILE) and reloads the
    settings; breaker state in Redis starts empty. Restored after the test."""
    client = redis_lib.Redis.from_url(test_env["REDIS_URL"])

    def clear_breakers() -> None:
        from app.services.circuit_breakers import forget_local_state

        # first what this process remembers (a breaker remembered open with a future `now`, success
        # counters waiting to be added), so nothing of the last test is written after the keys go
        forget_local_state()
        keys = list(client.scan_iter("im:breaker:*")) + list(client.scan_iter("im:ratelimit:breaker:*"))
        if keys:
            client.delete(*keys)

    saved = os.environ.get("CONFIG_FILE")
    clear_breakers()

    def write(tree: dict[str, Any]) -> Path:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(tree))
        os.environ["CONFIG_FILE"] = str(path)
        _reset()
        return path

    write({})
    yield write
    if saved is None:
        os.environ.pop("CONFIG_FILE", None)
    else:
        os.environ["CONFIG_FILE"] = saved
    _reset()
    clear_breakers()


# The integration guide's §8 webhook payload template, verbatim.
GUIDE_TEMPLATE = """{
  "event_type": "{{event_type}}",
  "incident": {
    "id": "{{incident.id}}",
    "title": "{{incident.title}}",
    "severity": "{{incident.severity}}",
    "status": "{{incident.status}}",
    "url": "https://incidents.example.com/incidents/{{incident.id}}"
  },
  "timestamp": "{{timestamp}}"
}
"""
