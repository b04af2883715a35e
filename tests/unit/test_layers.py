"""Layers: `app/` (domain, services, adapters) imports neither `api/` nor `tasks/`. Every module
under app/ is imported in a child process whose meta-path finder raises on `api` and `tasks`, and
every import statement under app/ (also those inside functions, which importing alone would not
run) is read from the source."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("api", "tasks")

_PROBE = """
import importlib, json, pkgutil, sys

BLOCKED = %r


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"app/ must not import {name}")
        return None


sys.meta_path.insert(0, Blocker())
import app

failures = {}
modules = []
for info in pkgutil.walk_packages(app.__path__, "app."):
    modules.append(info.name)
    try:
        importlib.import_module(info.name)
    except ImportError as exc:
        failures[info.name] = str(exc)
print(json.dumps({"modules": modules, "failures": failures}))
""" % (BLOCKED,)


def _app_modules() -> list[Path]:
    return sorted((ROOT / "app").rglob("*.py"))


def test_every_app_module_imports_without_api_or_tasks(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(found["modules"]) >= len(_app_modules()) - 1  # every file was visited (minus app/__init__)
    assert found["failures"] == {}


def test_no_import_statement_under_app_names_api_or_tasks():
    offenders = []
    for path in _app_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} imports {name}"
                          for name in names if name.split(".")[0] in BLOCKED]
    assert offenders == []


def test_services_and_domain_hold_no_dialect_branch():
    """Which database runs (Postgres or the embedded SQLite) is the adapters' business
    (app/adapters/bulk.py, analytics_sql.py, ingest_writers.py): no service or domain module asks."""
    offenders = []
    for path in _app_modules():
        if path.relative_to(ROOT).parts[1] not in ("services", "domain"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("dialect", "is_sqlite"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} reads .{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy.dialects"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}")
    assert offenders == []
