"""The Grafana dashboard shipped in deploy/grafana reads only series the code registers: every
expression names metrics of `app.metrics` (with the suffixes their type exposes) and groups by
labels those metrics have. A renamed metric breaks this test, not the ops team's dashboard."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from pathlib import Path
from typing import Any, Iterator

from prometheus_client import REGISTRY

import app

# every module of app/ (metrics are registered where they are counted: app.metrics, app.services.*),
# and the GraphQL door's (api/graphql counts its operations and subscriptions itself)
for _module in pkgutil.walk_packages(app.__path__, "app."):
    importlib.import_module(_module.name)
for _name in ("api.graphql.execution", "api.graphql.hub"):
    importlib.import_module(_name)

DASHBOARD = Path(__file__).resolve().parent.parent.parent / "deploy" / "grafana" / "incident-manager.json"
METRIC = re.compile(r"\bincident_manager_[a-z0-9_]+\b")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def _registered() -> dict[str, tuple[str, set[str]]]:
    """Exposed series name -> (family name, label names)."""
    exposed: dict[str, tuple[str, set[str]]] = {}
    for collector in list(REGISTRY._collector_to_names):  # every metric object of this process
        name = getattr(collector, "_name", None)
        kind = getattr(collector, "_type", None)
        if not name or not str(name).startswith("incident_manager_") or kind not in SUFFIXES:
            continue
        labels = set(getattr(collector, "_labelnames", ()))
        if kind == "histogram":
            labels.add("le")
        for suffix in SUFFIXES[kind]:
            exposed[f"{name}{suffix}"] = (name, labels)
    return exposed


def _targets(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for panel in panels:
        yield from ((panel["title"], t["expr"]) for t in panel.get("targets", []))
        yield from _targets(panel.get("panels", []))


def test_the_dashboard_is_grafana_json_with_panels():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    targets = list(_targets(dashboard["panels"]))
    assert len(targets) >= 10
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_expression_names_metrics_and_labels_the_code_registers():
    exposed = _registered()
    assert "incident_manager_queue_depth" in exposed  # the registry was read
    dashboard = json.loads(DASHBOARD.read_text())
    used: set[str] = set()
    for title, expr in _targets(dashboard["panels"]):
        names = METRIC.findall(expr)
        assert names, f"{title!r}: {expr} reads no incident_manager_ metric"
        labels: set[str] = set()
        for name in names:
            assert name in exposed, f"{title!r}: {name} is not a series the code exposes"
            labels |= exposed[name][1]
            used.add(exposed[name][0])
        for group in GROUPING.findall(expr):
            for label in (part.strip() for part in group.split(",") if part.strip()):
                assert label in labels, f"{title!r}: groups by {label!r}, which {names} do not have"
    # the main series are on it: queues, tasks, intake, escalation
    for main in ("incident_manager_queue_depth", "incident_manager_queue_oldest_age_seconds",
                 "incident_manager_task_duration_seconds", "incident_manager_events_ingested_total",
                 "incident_manager_escalation_due", "incident_manager_dead_letters_total"):
        assert main.removesuffix("_total") in used or main in used, main
