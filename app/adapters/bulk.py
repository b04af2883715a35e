"""Set-based SQL over many rows: the one place that knows the database dialect.

Services describe what to write or select; these helpers pick how, so no service holds a
Postgres/SQLite branch (docs/foundation.md, "Layers").

On Postgres the rows travel as ONE JSON document expanded by `jsonb_to_recordset` (one parameter,
one statement, the same SQL text whatever the row count): an executemany is a statement per row
and cost the escalation sweep ~10x more (docs/escalation.md). Elsewhere (SQLite) an executemany."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

import orjson
from sqlalchemy import Table, any_, bindparam, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from app.config import get_settings

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
                constant: dict[str, Any] | None = None, *, add: Sequence[str] = (),
                where_null: Sequence[str] = ()) -> None:
    """UPDATE each row matched by `key` (given in the rows as `b_key`) with its other values, plus
    `constant` values for every row. Columns in `add` are incremented by the row's value instead of
    replaced; rows whose `where_null` columns are already set are left alone."""
    if not rows:
        return
    columns = tuple(rows[0])
    constant = constant or {}
    if _postgres(session):
        sets = ([f"{c} = t.{c} + v.{c}" if c in add else f"{c} = v.{c}" for c in columns if c != "b_key"]
                + [f"{c} = :c_{c}" for c in constant])
        sql = (f"UPDATE {table.name} AS t SET {', '.join(sets)} FROM {_recordset(table, columns, key)}"
               f" WHERE t.{key} = v.b_key" + "".join(f" AND t.{c} IS NULL" for c in where_null))
        session.execute(text(sql).bindparams(*[bindparam(f"c_{c}", type_=table.c[c].type) for c in constant]),
                        {"rows": _json(rows), **{f"c_{c}": v for c, v in constant.items()}})
        return
    values: dict[str, Any] = {c: table.c[c] + bindparam(f"p_{c}") if c in add else bindparam(f"p_{c}")
                              for c in columns if c != "b_key"}
    condition = table.c[key] == bindparam("b_key")
    for c in where_null:
        condition = condition & table.c[c].is_(None)
    session.execute(update(table).where(condition).values(**values, **constant),
                    [{("b_key" if c == "b_key" else f"p_{c}"): v for c, v in row.items()} for row in rows])


def one_of(column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
    """`column IN (values)`, written on Postgres as `column = ANY(<one array parameter>)`.

    Why: an IN list renders one placeholder per value, so every batch size is a new SQL text that
    SQLAlchemy re-renders and psycopg re-parses and Postgres re-plans (tens of ms per batch of
    1,000 ids). With one array parameter the text never changes: it is compiled once and, after a
    few runs, executed as a server-side prepared statement."""
    values = list(values)
    if get_settings().is_sqlite:
        return column.in_(values)  # type: ignore[no-any-return]
    return column == any_(bindparam(None, values, type_=ARRAY(column.type)))  # type: ignore[no-any-return]


def claim_rows(session: Session, sql: str, params: Mapping[str, Any]) -> list[Any]:
    """Run a statement whose row claims end in `FOR UPDATE SKIP LOCKED`. SQLite has one writer at a
    time and no row locks to skip: the clause goes, and times are compared naive (as stored)."""
    if _postgres(session):
        return list(session.execute(text(sql), params).all())
    naive = {k: v.replace(tzinfo=None) if isinstance(v, datetime) else v for k, v in params.items()}
    return list(session.execute(text(sql.replace(" FOR UPDATE SKIP LOCKED", "")), naive).all())

