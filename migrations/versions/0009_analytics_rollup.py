"""incident analytics rollup (Postgres): per-day figures per group with duration histograms, the
days computed, and the days whose incidents changed after they were computed (marked by triggers)

docs/escalation.md "Analytics" explains the design: closed UTC days are rolled up by beat's
`analytics.rollup`; a query reads rolled-up days from `analytics_daily` and the rest from
`incidents`; a day with a mark in `analytics_dirty` is read from `incidents` until it is rolled
up again. SQLite (the embedded default) has no arrays: it keeps answering from `incidents` only.

Revision ID: 0009
Revises: 0008
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: Union[str, Sequence[str], None] = "0008"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# The columns whose change alters a day's figures (app/adapters/analytics_sql.py reads these).
WATCHED = ("created_at", "severity", "category", "team", "source", "status", "acknowledged_at", "resolved_at",
           "sla_acknowledge_breached", "sla_resolve_breached", "merged_into")
_UTC_DAY = "(({col}) AT TIME ZONE 'UTC')::date"
_CLOSED = "{day} < (statement_timestamp() AT TIME ZONE 'UTC')::date"


def _closed(row: str) -> str:
    return _CLOSED.format(day=_UTC_DAY.format(col=f"{row}.created_at"))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_table(
        "analytics_daily",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("day", sa.Date(), nullable=False),
        # '' = all incidents of the day; else the grouping column (severity, category, team, source)
        sa.Column("dim", sa.String(16), nullable=False),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("acknowledged", sa.BigInteger(), nullable=False),
        sa.Column("resolved", sa.BigInteger(), nullable=False),
        sa.Column("tta_sum", sa.Float(), nullable=False),
        sa.Column("ttr_sum", sa.Float(), nullable=False),
        sa.Column("ack_breached", sa.BigInteger(), nullable=False),
        sa.Column("resolve_breached", sa.BigInteger(), nullable=False),
        sa.Column("any_breached", sa.BigInteger(), nullable=False),
        # sparse histograms: bucket numbers and their counts (app/adapters/analytics_sql.py)
        sa.Column("tta_b", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("tta_c", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("ttr_b", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("ttr_c", postgresql.ARRAY(sa.BigInteger()), nullable=False),
    )
    op.create_index("ix_analytics_daily_dim_day", "analytics_daily", ["dim", "day"])
    op.create_table(
        "analytics_days",
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("incidents", sa.BigInteger(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
    )
    # Append-only marks (no row is ever updated: writers take no lock on a shared row).
    op.create_table(
        "analytics_dirty",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("day", sa.Date(), nullable=False),
    )
    op.create_index("ix_analytics_dirty_day", "analytics_dirty", ["day"])
    op.execute("""
        CREATE FUNCTION incidents_analytics_mark() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_OP IN ('UPDATE', 'DELETE') THEN
            INSERT INTO analytics_dirty (day) VALUES ((OLD.created_at AT TIME ZONE 'UTC')::date);
          END IF;
          IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.created_at IS DISTINCT FROM OLD.created_at) THEN
            INSERT INTO analytics_dirty (day) VALUES ((NEW.created_at AT TIME ZONE 'UTC')::date);
          END IF;
          RETURN NULL;
        END $$""")
    old = ", ".join(f"OLD.{c}" for c in WATCHED)
    new = ", ".join(f"NEW.{c}" for c in WATCHED)
    # Row triggers with a WHEN clause: for the hot writes (today's incidents) the clause is false and
    # no function runs. `statement_timestamp()`: a day counts as closed from its end on.
    op.execute(f"""CREATE TRIGGER incidents_analytics_update AFTER UPDATE ON incidents FOR EACH ROW
        WHEN (({_closed('OLD')} OR {_closed('NEW')}) AND ROW({old}) IS DISTINCT FROM ROW({new}))
        EXECUTE FUNCTION incidents_analytics_mark()""")
    op.execute(f"""CREATE TRIGGER incidents_analytics_insert AFTER INSERT ON incidents FOR EACH ROW
        WHEN ({_closed('NEW')}) EXECUTE FUNCTION incidents_analytics_mark()""")
    op.execute(f"""CREATE TRIGGER incidents_analytics_delete AFTER DELETE ON incidents FOR EACH ROW
        WHEN ({_closed('OLD')}) EXECUTE FUNCTION incidents_analytics_mark()""")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in ("update", "insert", "delete"):
        op.execute(f"DROP TRIGGER incidents_analytics_{name} ON incidents")
    op.execute("DROP FUNCTION incidents_analytics_mark()")
    op.drop_table("analytics_dirty")
    op.drop_table("analytics_days")
    op.drop_table("analytics_daily")
