"""incidents: fillfactor 70, so an event joining an open incident updates its row in place (a HOT
update: no new entry in any of the table's 12 indexes). At the default 100 every incident page is
full, so each upsert of `event_count`/`last_seen` wrote a new row version elsewhere plus an entry in
every index: in an alert storm (1,000 events joining 1,000 open incidents per batch) that was over
half of Postgres's time per batch (docs/foundation.md, "Alert storms").

Revision ID: 0011
Revises: 0010
"""
from typing import Sequence, Union

from alembic import op

revision: str = "0011"
down_revision: Union[str, Sequence[str], None] = "0010"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # Only pages filled from now on keep the room; existing pages get it back as rows move.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE incidents SET (fillfactor = 70)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE incidents RESET (fillfactor)")
