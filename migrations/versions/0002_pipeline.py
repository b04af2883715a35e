"""pipeline: service catalog, correlation groups and members

Revision ID: 0002
Revises: 0001
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import app.adapters.models

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TS = app.adapters.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "services",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("owner_team", sa.String(length=200), nullable=True),
        sa.Column("tier", sa.String(length=20), nullable=True),
        sa.Column("dependencies", JSON, nullable=False),
        sa.Column("runbook_url", sa.String(length=2000), nullable=True),
        sa.Column("escalation_policy", sa.String(length=200), nullable=True),
        sa.Column("metrics_queries", JSON, nullable=False),
        sa.Column("tags", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "correlation_groups",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("root_incident_id", sa.String(length=32), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("reasons", JSON, nullable=False),
        sa.Column("member_count", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_correlation_groups_root_incident_id", "correlation_groups", ["root_incident_id"])
    op.create_index("ix_correlation_groups_created_at", "correlation_groups", ["created_at"])
    op.create_table(
        "correlation_group_members",
        sa.Column("incident_id", sa.String(length=32), nullable=False),
        sa.Column("group_id", sa.String(length=40), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("reasons", JSON, nullable=False),
        sa.Column("added_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("incident_id"),
    )
    op.create_index("ix_correlation_group_members_group_id", "correlation_group_members", ["group_id"])


def downgrade() -> None:
    op.drop_index("ix_correlation_group_members_group_id", table_name="correlation_group_members")
    op.drop_table("correlation_group_members")
    op.drop_index("ix_correlation_groups_created_at", table_name="correlation_groups")
    op.drop_index("ix_correlation_groups_root_incident_id", table_name="correlation_groups")
    op.drop_table("correlation_groups")
    op.drop_table("services")
