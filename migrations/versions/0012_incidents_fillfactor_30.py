"""incidents: fillfactor 30, so the route stage's one write of a new incident (its classification,
enrichment, group, team: the row grows by ~40 %) stays on the row's page as a HOT update, with no
new entry in any of the table's 12 indexes. At 70 (0011) a page took five new incidents and had room
for the routed versions of one or two: 24-25 % of those updates were HOT, and each of the others
wrote 12 index entries. Measured with every event opening its own incident: 100 % HOT, and Postgres's
CPU for the workers 186-191 -> 131 us per event (docs/pipeline.md, "Issue 11, third round").
An event joining an open incident (0011's case) finds even more room.

Revision ID: 0012
Revises: 0011
"""
from typing import Sequence, Union

from alembic import op

revision: str = "0012"
down_revision: Union[str, Sequence[str], None] = "0011"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # Only pages filled from now on keep the room; existing pages get it back as rows move.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE incidents SET (fillfactor = 30)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE incidents SET (fillfactor = 70)")
