"""notification deliveries: the receiver's response code as a column, and claims as a status
(`sending`, with `next_attempt_at` as the claim's lease) so the due index covers both

Revision ID: 0008
Revises: 0007
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: Union[str, Sequence[str], None] = "0007"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

DUE = "status IN ('pending', 'sending')"


def upgrade() -> None:
    op.add_column("notification_deliveries", sa.Column("response_code", sa.Integer(), nullable=True))
    op.drop_index("ix_notification_deliveries_pending", table_name="notification_deliveries")
    op.create_index("ix_notification_deliveries_due", "notification_deliveries", ["next_attempt_at"],
                    postgresql_where=sa.text(DUE), sqlite_where=sa.text(DUE))


def downgrade() -> None:
    op.drop_index("ix_notification_deliveries_due", table_name="notification_deliveries")
    op.execute("UPDATE notification_deliveries SET status = 'pending' WHERE status = 'sending'")
    op.create_index("ix_notification_deliveries_pending", "notification_deliveries", ["next_attempt_at"],
                    postgresql_where=sa.text("status = 'pending'"), sqlite_where=sa.text("status = 'pending'"))
    op.drop_column("notification_deliveries", "response_code")
