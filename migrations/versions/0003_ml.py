"""ml: model versions and training samples

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-23 18:10:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import app.adapters.models

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ml_model_versions",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("trained_at", app.adapters.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("training_size", sa.Integer(), nullable=False),
        sa.Column("feedback_samples", sa.Integer(), nullable=False),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("held_out_score", sa.Float(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("activated_at", app.adapters.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("file_path", sa.String(length=1000), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("trained_by", sa.String(length=200), nullable=False),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("version"),
    )
    with op.batch_alter_table("ml_model_versions", schema=None) as batch_op:
        batch_op.create_index("uq_ml_model_versions_active", ["active"], unique=True,
                              postgresql_where=sa.text("active"), sqlite_where=sa.text("active = 1"))

    op.create_table(
        "ml_training_samples",
        sa.Column("id", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("incident_id", sa.String(length=32), nullable=True),
        sa.Column("origin", sa.String(length=20), nullable=False),
        sa.Column("features", JSON, nullable=False),
        sa.Column("severity", sa.String(length=2), nullable=True),
        sa.Column("category", sa.String(length=100), nullable=True),
        sa.Column("predicted_severity", sa.String(length=2), nullable=True),
        sa.Column("predicted_category", sa.String(length=100), nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", app.adapters.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("consumed_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("ml_training_samples", schema=None) as batch_op:
        batch_op.create_index("ix_ml_training_samples_incident_id", ["incident_id"], unique=False)
        batch_op.create_index("ix_ml_training_samples_pending", ["created_at"], unique=False,
                              postgresql_where=sa.text("consumed_by IS NULL"),
                              sqlite_where=sa.text("consumed_by IS NULL"))


def downgrade() -> None:
    with op.batch_alter_table("ml_training_samples", schema=None) as batch_op:
        batch_op.drop_index("ix_ml_training_samples_pending")
        batch_op.drop_index("ix_ml_training_samples_incident_id")
    op.drop_table("ml_training_samples")
    with op.batch_alter_table("ml_model_versions", schema=None) as batch_op:
        batch_op.drop_index("uq_ml_model_versions_active")
    op.drop_table("ml_model_versions")
