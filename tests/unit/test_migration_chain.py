"""The migrations form one line: every revision id is unique (Alembic only warns about a repeated id
and then silently keeps one of the two files), each file's id matches its number, and there is one
head. Two branches that each added "the next" migration fail here instead of skipping one."""

from __future__ import annotations

import ast
from pathlib import Path

from alembic.script import ScriptDirectory

from app.adapters.migrate import alembic_config

VERSIONS = Path(__file__).resolve().parents[2] / "migrations" / "versions"


def _assigned(path: Path, name: str) -> object:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            return ast.literal_eval(node.value) if node.value is not None else None
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.name} assigns no {name}")


def test_revision_ids_are_unique_and_match_their_file_numbers():
    files = sorted(VERSIONS.glob("[0-9]*.py"))
    ids = [_assigned(path, "revision") for path in files]
    assert len(ids) == len(set(ids)), f"repeated revision ids: {ids}"
    for path, revision in zip(files, ids, strict=True):
        assert path.name.startswith(f"{revision}_"), (path.name, revision)


def test_one_head():
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, f"several heads: {heads} (a new migration must revise the last one)"
