"""the TOTP secret shown for enrolment belongs to the sign-in session

Accounts that never enrolled lose the secret stored on them: it was shown to everyone who
opened the code page with the account's password, so the owner must not enrol it. Their
next sign-in draws a fresh one for its own session.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('signin_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pending_totp_secret', sa.String(length=64),
                                      nullable=True))
    users = sa.table('users', sa.column('totp_secret', sa.String),
                     sa.column('totp_enabled', sa.Boolean))
    op.execute(users.update().where(users.c.totp_enabled.is_(False))
               .values(totp_secret=None))


def downgrade() -> None:
    # The cleared secrets are not restored: the old code draws one at the next sign-in.
    with op.batch_alter_table('signin_sessions', schema=None) as batch_op:
        batch_op.drop_column('pending_totp_secret')
