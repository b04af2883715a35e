"""playbooks: definitions, runs and step runs

Revision ID: 0007
Revises: 0006
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import app.adapters.models

revision: str = "0007"
down_revision: Union[str, Sequence[str], None] = "0006"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TS = app.adapters.models.UTCDateTime(timezone=True)
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
RUN_OPEN_SQL = "status IN ('queued','running')"
AUTO_SQL = "\"trigger\" = 'auto'"


def upgrade() -> None:
    op.create_table(
        "playbooks",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("triggers", JSON, nullable=False),
        sa.Column("steps", JSON, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "playbook_runs",
        sa.Column("id", BIGINT_PK, autoincrement=True, primary_key=True),
        sa.Column("playbook", sa.String(200), nullable=False),
        sa.Column("playbook_version", sa.Integer(), nullable=False),
        sa.Column("definition", JSON, nullable=False),
        sa.Column("incident_id", sa.String(32), nullable=False),
        sa.Column("trigger", sa.String(10), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("current_step", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("resume_at", TS, nullable=True),
        sa.Column("next_check_at", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("cancelled_by", sa.String(200), nullable=True),
    )
    op.create_index("ix_playbook_runs_incident_id", "playbook_runs", ["incident_id"])
    op.create_index("ix_playbook_runs_open", "playbook_runs", ["next_check_at"],
                    postgresql_where=sa.text(RUN_OPEN_SQL), sqlite_where=sa.text(RUN_OPEN_SQL))
    op.create_index("uq_playbook_runs_auto", "playbook_runs", ["incident_id", "playbook"], unique=True,
                    postgresql_where=sa.text(AUTO_SQL), sqlite_where=sa.text(AUTO_SQL))
    op.create_table(
        "playbook_step_runs",
        sa.Column("id", BIGINT_PK, autoincrement=True, primary_key=True),
        sa.Column("run_id", BIGINT_PK, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("type", sa.String(30), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("output", JSON, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("lease_until", TS, nullable=True),
        sa.Column("approved_by", sa.String(200), nullable=True),
        sa.Column("approved_at", TS, nullable=True),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("run_id", "position", name="uq_playbook_step_runs_position"),
    )


def downgrade() -> None:
    op.drop_table("playbook_step_runs")
    op.drop_index("uq_playbook_runs_auto", table_name="playbook_runs")
    op.drop_index("ix_playbook_runs_open", table_name="playbook_runs")
    op.drop_index("ix_playbook_runs_incident_id", table_name="playbook_runs")
    op.drop_table("playbook_runs")
    op.drop_table("playbooks")
