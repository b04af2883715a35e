"""Set-based writes of many rows in one statement.

On Postgres the rows travel as ONE JSON document expanded by `jsonb_to_recordset` (one parameter,
one statement, the same SQL text whatever the row count): an executemany is a statement per row
and cost the escalation sweep ~10x more (docs/escalation.md). Elsewhere (SQLite) an executemany."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import orjson
from sqlalchemy import Table, bindparam, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

_PG = postgresql.dialect()  # type: ignore[no-untyped-call]


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _json(rows: Sequence[dict[str, Any]]) -> str:
    return orjson.dumps(list(rows), default=str).decode()


@lru_cache(maxsize=64)
def _recordset(table: Table, columns: tuple[str, ...], key: str | None = None) -> str:
    """`jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(<column> <type>, ...)` with the table's types."""
    typed = []
    for name in columns:
        column = table.c[key if name == "b_key" and key else name]
        typed.append(f"{name} {column.type.compile(dialect=_PG)}")
    return "jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(" + ", ".join(typed) + ")"


def insert_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]],
                conflict_key: str | None = None, returning: str | None = None) -> list[Any]:
    """INSERT the rows (all with the same keys); `conflict_key` (columns of a unique index, comma
    separated): skip rows whose key exists.
    Returns the `returning` column of the rows written (empty when not asked)."""
    if not rows:
        return []
    columns = tuple(rows[0])
    if _postgres(session):
        sql = (f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT {', '.join('v.' + c for c in columns)}"
               f" FROM {_recordset(table, columns)}")
        if conflict_key:
            sql += f" ON CONFLICT ({conflict_key}) DO NOTHING"
        if returning:
            sql += f" RETURNING {returning}"
        result = session.execute(text(sql), {"rows": _json(rows)})
        return [r[0] for r in result] if returning else []
    stmt: Any = sqlite.insert(table)
    if conflict_key:
        stmt = stmt.on_conflict_do_nothing(index_elements=[c.strip() for c in conflict_key.split(",")])
    if returning:
        return [r[0] for r in session.execute(stmt.returning(table.c[returning]), list(rows))]
    session.execute(stmt, list(rows))
    return []


def update_rows(session: Session, table: Table, key: str, rows: Sequence[dict[str, Any]],
                constant: dict[str, Any] | None = None) -> None:
    """UPDATE each row matched by `key` (given in the rows as `b_key`) with its other values, plus
    `constant` values for every row."""
    if not rows:
        return
    columns = tuple(rows[0])
    constant = constant or {}
    if _postgres(session):
        sets = [f"{c} = v.{c}" for c in columns if c != "b_key"] + [f"{c} = :c_{c}" for c in constant]
        sql = (f"UPDATE {table.name} AS t SET {', '.join(sets)} FROM {_recordset(table, columns, key)}"
               f" WHERE t.{key} = v.b_key")
        session.execute(text(sql).bindparams(*[bindparam(f"c_{c}", type_=table.c[c].type) for c in constant]),
                        {"rows": _json(rows), **{f"c_{c}": v for c, v in constant.items()}})
        return
    values: dict[str, Any] = {c: bindparam(f"p_{c}") for c in columns if c != "b_key"}
    session.execute(update(table).where(table.c[key] == bindparam("b_key")).values(**values, **constant),
                    [{("b_key" if c == "b_key" else f"p_{c}"): v for c, v in row.items()} for row in rows])

