"""SLA targets: the defaults (the contract's resolve targets) and config.yaml's `sla:` overrides."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from app.config import ConfigError, load_settings
from app.domain import sla

T0 = datetime(2027, 3, 28, 7, 0, tzinfo=timezone.utc)


def settings_with(tmp_path: Path, body: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "config.yaml"
    path.write_text(body)
    return load_settings({"CONFIG_FILE": str(path), "DATA_DIR": str(tmp_path), "JWT_SECRET": "x" * 40})


def test_default_resolve_targets_are_the_contracts():
    resolve = {s: sla.deadlines(s, T0).resolve_by - T0 for s in ("P0", "P1", "P2", "P3", "P4")}
    assert resolve == {"P0": timedelta(minutes=15), "P1": timedelta(hours=1), "P2": timedelta(hours=4),
                       "P3": timedelta(hours=24), "P4": timedelta(hours=72)}


def test_config_overrides_some_severities(tmp_path):
    settings = settings_with(tmp_path, "sla:\n  acknowledge_secs: {P0: 120}\n  resolve_secs: {P0: 600, P4: 86400}\n")
    p0 = sla.deadlines("P0", T0, settings.sla)
    assert (p0.acknowledge_by - T0, p0.resolve_by - T0) == (timedelta(minutes=2), timedelta(minutes=10))
    assert sla.deadlines("P4", T0, settings.sla).resolve_by - T0 == timedelta(days=1)
    assert sla.deadlines("P1", T0, settings.sla) == sla.deadlines("P1", T0)  # not given: the default


@pytest.mark.parametrize("body, key", [
    ("sla:\n  resolve_secs: {P9: 60}\n", "sla.resolve_secs"),
    ("sla:\n  acknowledge_secs: {P0: 0}\n", "sla.acknowledge_secs"),
    ("sla:\n  respond_secs: {P0: 60}\n", "sla.respond_secs"),
])
def test_bad_sla_config_names_the_key(tmp_path, body, key):
    with pytest.raises(ConfigError) as error:
        settings_with(tmp_path, body)
    assert key in str(error.value)
