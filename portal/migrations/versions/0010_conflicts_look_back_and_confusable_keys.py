"""former institutions, institutions at submission and at assignment, confusable-proof keys

Conflicts of interest look back: every institution a person's profile left is kept with
when it was left; an application keeps its first submission and the applicant's institution
then; an assignment keeps the expert's institution then. Existing rows get what can be known
now: submission at creation (the widest look-back), institutions as the profiles name them.

The registry's key table holds the confusable skeletons of every name instead of the folded
keys, so that a look-alike of an entry (a Cyrillic а in "Lingnan") cannot be added beside it.
Where two existing entries already look alike, the older keeps the shared skeleton and the
younger is refused at its next edit until an admin renames it.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from approvals.institutions import skeletons

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

_institutions = sa.table('institutions', sa.column('id', sa.Integer),
                         sa.column('name_zh', sa.String), sa.column('name_en', sa.String),
                         sa.column('aliases', sa.JSON))
_keys = sa.table('institution_keys', sa.column('key', sa.String),
                 sa.column('institution_id', sa.Integer))


def _rekey(forms) -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(_institutions).order_by(_institutions.c.id)).all()
    conn.execute(_keys.delete())
    held: set[str] = set()
    for row in rows:
        for form in sorted(forms(row) - held):
            conn.execute(_keys.insert().values(key=form, institution_id=row.id))
            held.add(form)


def _names(row) -> list[str]:
    return [row.name_zh, row.name_en, *(row.aliases or [])]


def upgrade() -> None:
    op.create_table(
        'former_institutions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('institution_id', sa.Integer(), nullable=False),
        sa.Column('left_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id']),
        sa.ForeignKeyConstraint(['institution_id'], ['institutions.id']),
        sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_former_institutions_user_id', 'former_institutions', ['user_id'])
    with op.batch_alter_table('applications', schema=None) as batch_op:
        batch_op.add_column(sa.Column('submitted_at', sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('submitted_institution_id', sa.Integer(),
                                      nullable=True))
        batch_op.create_foreign_key('fk_applications_submitted_institution_id',
                                    'institutions', ['submitted_institution_id'], ['id'])
    with op.batch_alter_table('assignments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('institution_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_assignments_institution_id', 'institutions',
                                    ['institution_id'], ['id'])
    op.execute(sa.text(
        "UPDATE applications SET submitted_at = created_at, submitted_institution_id = "
        "(SELECT institution_id FROM profiles WHERE profiles.user_id = "
        "applications.researcher_id) WHERE state <> 'draft'"))
    op.execute(sa.text(
        "UPDATE assignments SET institution_id = (SELECT institution_id FROM profiles "
        "WHERE profiles.user_id = assignments.expert_id)"))
    _rekey(lambda row: frozenset().union(*(skeletons(n) for n in _names(row))))


def downgrade() -> None:
    from approvals.institutions import key
    _rekey(lambda row: frozenset(k for k in (key(n) for n in _names(row)) if k))
    with op.batch_alter_table('assignments', schema=None) as batch_op:
        batch_op.drop_constraint('fk_assignments_institution_id', type_='foreignkey')
        batch_op.drop_column('institution_id')
    with op.batch_alter_table('applications', schema=None) as batch_op:
        batch_op.drop_constraint('fk_applications_submitted_institution_id',
                                 type_='foreignkey')
        batch_op.drop_column('submitted_institution_id')
        batch_op.drop_column('submitted_at')
    op.drop_index('ix_former_institutions_user_id', 'former_institutions')
    op.drop_table('former_institutions')
