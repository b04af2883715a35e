"""merge pipeline and ml branches

Revision ID: 0004
Revises: 0002, 0003
Create Date: 2026-11-23 19:06:18.566489
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa



revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = ('0002', '0003')
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
