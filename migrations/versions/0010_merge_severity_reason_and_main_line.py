"""merge the two heads: 0005 (severity_reason, which revises 0006) and the line 0007 → 0009

Since 0005 was written beside 0007 both revised 0006, so the project had two heads and every
`upgrade` ran at "heads". This revision joins them: one head again, and the next migration revises
it (tests/unit/test_migration_chain.py fails on a second head or a repeated revision id).

Revision ID: 0010
Revises: 0005, 0009
"""
from typing import Sequence, Union

revision: str = "0010"
down_revision: Union[str, Sequence[str], None] = ("0005", "0009")
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
