"""incidents.severity_reason: what decided an incident's severity (docs/ml.md, "Severity policy")

Revision ID: 0005
Revises: 0006
Create Date: 2026-12-06 02:20:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = "0006"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
# Every incident stored before this revision kept its source's severity (the pipeline wrote the
# model's only through the old threshold rule, whose decision is in the timeline).
SOURCE_DECIDED = sa.text("'{\"decided_by\": \"source\"}'")


def upgrade() -> None:
    op.add_column("incidents", sa.Column("severity_reason", JSON, nullable=False, server_default=SOURCE_DECIDED))


def downgrade() -> None:
    op.drop_column("incidents", "severity_reason")
