"""escalation: users, teams, schedules, escalation policies, incident escalation snapshots,
notification deliveries; incident indexes for the sweep, the SLA check and analytics

Revision ID: 0006
Revises: 0004
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import app.adapters.models

revision: str = "0006"
down_revision: Union[str, Sequence[str], None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TS = app.adapters.models.UTCDateTime(timezone=True)
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

SLA_ACK_OPEN_SQL = "sla_acknowledge_breached = false AND acknowledged_at IS NULL AND resolved_at IS NULL"
SLA_RESOLVE_OPEN_SQL = "sla_resolve_breached = false AND resolved_at IS NULL"
ANALYTICS_INCLUDE = ["severity", "category", "team", "source", "status", "acknowledged_at", "resolved_at",
                     "sla_acknowledge_breached", "sla_resolve_breached", "merged_into"]


def _stamps() -> list[sa.Column]:
    return [sa.Column("created_at", TS, nullable=False), sa.Column("updated_at", TS, nullable=False)]


def upgrade() -> None:
    # No foreign keys on the engine's write-heavy tables (incident_escalations,
    # notification_deliveries): rows are only written for incidents the sweep holds locked, and the
    # per-row RI check cost the sweep a fifth of its time (docs/escalation.md).
    op.create_table(
        "users",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("full_name", sa.String(200), nullable=True),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("phone", sa.String(40), nullable=True),
        sa.Column("contact", JSON, nullable=False),
        sa.Column("time_zone", sa.String(64), nullable=True),
        *_stamps(),
    )
    op.create_table(
        "teams",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("members", JSON, nullable=False),
        sa.Column("schedule", sa.String(200), nullable=True),
        sa.Column("escalation_policy", sa.String(200), nullable=True),
        *_stamps(),
    )
    op.create_table(
        "schedules",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("time_zone", sa.String(64), nullable=False),
        sa.Column("layers", JSON, nullable=False),
        sa.Column("overrides", JSON, nullable=False),
        *_stamps(),
    )
    op.create_table(
        "escalation_policies",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("levels", JSON, nullable=False),
        sa.Column("repeat", sa.Integer(), nullable=False),
        sa.Column("conditions", JSON, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        *_stamps(),
    )
    op.create_table(
        "incident_escalations",
        sa.Column("incident_id", sa.String(32), primary_key=True),
        sa.Column("policy_name", sa.String(200), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=False),
        sa.Column("snapshot", JSON, nullable=False),
        sa.Column("cycle", sa.Integer(), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("paused_at", TS, nullable=True),
        sa.Column("paused_remaining_secs", sa.Float(), nullable=True),
        sa.Column("exhausted_at", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "notification_deliveries",
        sa.Column("id", BIGINT_PK, autoincrement=True, primary_key=True),
        sa.Column("incident_id", sa.String(32), nullable=False),
        sa.Column("escalation_token", sa.String(64), nullable=False),
        sa.Column("step", sa.String(40), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(50), nullable=False),
        sa.Column("target_type", sa.String(20), nullable=False),
        sa.Column("target_id", sa.String(200), nullable=False),
        sa.Column("recipient", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("reason", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("next_attempt_at", TS, nullable=True),
    )
    op.create_index("uq_notification_deliveries_step", "notification_deliveries",
                    ["incident_id", "step", "recipient", "channel"], unique=True)
    op.create_index("ix_notification_deliveries_pending", "notification_deliveries", ["next_attempt_at"],
                    postgresql_where=sa.text("status = 'pending'"), sqlite_where=sa.text("status = 'pending'"))
    op.create_index("ix_incidents_next_escalation", "incidents", ["next_escalation_at", "id"],
                    postgresql_where=sa.text("next_escalation_at IS NOT NULL"),
                    sqlite_where=sa.text("next_escalation_at IS NOT NULL"))
    op.create_index("ix_incidents_sla_ack_open", "incidents", ["sla_acknowledge_by"],
                    postgresql_where=sa.text(SLA_ACK_OPEN_SQL), sqlite_where=sa.text(SLA_ACK_OPEN_SQL))
    op.create_index("ix_incidents_sla_resolve_open", "incidents", ["sla_resolve_by"],
                    postgresql_where=sa.text(SLA_RESOLVE_OPEN_SQL), sqlite_where=sa.text(SLA_RESOLVE_OPEN_SQL))
    op.create_index("ix_incidents_analytics", "incidents", ["created_at"], postgresql_include=ANALYTICS_INCLUDE)


def downgrade() -> None:
    for name in ("ix_incidents_analytics", "ix_incidents_sla_resolve_open", "ix_incidents_sla_ack_open",
                 "ix_incidents_next_escalation"):
        op.drop_index(name, table_name="incidents")
    op.drop_index("ix_notification_deliveries_pending", table_name="notification_deliveries")
    op.drop_index("uq_notification_deliveries_step", table_name="notification_deliveries")
    for table in ("notification_deliveries", "incident_escalations", "escalation_policies", "schedules", "teams",
                  "users"):
        op.drop_table(table)
