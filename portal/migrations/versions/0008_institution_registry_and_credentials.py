"""institution registry, institution claims, credential verifications

Profiles lose their free-text institution: each non-empty one becomes a pending
institution claim for a chair to confirm, because text is what conflict checks must no
longer compare.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 10:00:00
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'institutions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name_zh', sa.String(length=200), nullable=False),
        sa.Column('name_en', sa.String(length=200), nullable=False),
        sa.Column('aliases', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'))
    op.create_table(
        'institution_keys',
        sa.Column('key', sa.String(length=200), nullable=False),
        sa.Column('institution_id', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['institution_id'], ['institutions.id']),
        sa.PrimaryKeyConstraint('key'))
    op.create_index('ix_institution_keys_institution_id', 'institution_keys',
                    ['institution_id'])
    op.create_table(
        'institution_claims',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('text', sa.String(length=200), nullable=False),
        sa.Column('state', sa.String(length=20), nullable=False),
        sa.Column('institution_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('decided_by', sa.Integer(), nullable=True),
        sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('reasons', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id']),
        sa.ForeignKeyConstraint(['institution_id'], ['institutions.id']),
        sa.ForeignKeyConstraint(['decided_by'], ['users.id']),
        sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_institution_claims_user_id', 'institution_claims', ['user_id'])
    op.create_index('ix_institution_claims_state', 'institution_claims', ['state'])
    op.create_table(
        'credential_verifications',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=20), nullable=False),
        sa.Column('value', sa.String(length=50), nullable=False),
        sa.Column('evidence', sa.LargeBinary(), nullable=False),
        sa.Column('evidence_sha256', sa.String(length=64), nullable=False),
        sa.Column('evidence_type', sa.String(length=10), nullable=False),
        sa.Column('verified_by', sa.Integer(), nullable=False),
        sa.Column('verified_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id']),
        sa.ForeignKeyConstraint(['verified_by'], ['users.id']),
        sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_credential_verifications_user_id', 'credential_verifications',
                    ['user_id'])

    with op.batch_alter_table('profiles', schema=None) as batch_op:
        batch_op.add_column(sa.Column('institution_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('institution_claim_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_profiles_institution_id', 'institutions',
                                    ['institution_id'], ['id'])
        batch_op.create_foreign_key('fk_profiles_institution_claim_id', 'institution_claims',
                                    ['institution_claim_id'], ['id'])
        batch_op.create_index('ix_profiles_institution_id', ['institution_id'])

    # Typed institutions become claims awaiting a chair: none is trusted as an identity.
    conn = op.get_bind()
    profiles = sa.table('profiles', sa.column('user_id', sa.Integer),
                        sa.column('institution', sa.String),
                        sa.column('institution_claim_id', sa.Integer))
    claims = sa.table('institution_claims', sa.column('id', sa.Integer),
                      sa.column('user_id', sa.Integer), sa.column('text', sa.String),
                      sa.column('state', sa.String), sa.column('created_at', sa.DateTime),
                      sa.column('reasons', sa.Text))
    now = datetime.now(UTC)
    for user_id, text in conn.execute(sa.select(profiles.c.user_id, profiles.c.institution)
                                      ).all():
        if not (text or "").strip():
            continue
        claim_id = conn.execute(claims.insert().values(
            user_id=user_id, text=text.strip()[:200], state='pending', created_at=now,
            reasons='').returning(claims.c.id)).scalar_one()
        conn.execute(profiles.update().where(profiles.c.user_id == user_id)
                     .values(institution_claim_id=claim_id))

    with op.batch_alter_table('profiles', schema=None) as batch_op:
        batch_op.drop_column('institution')


def downgrade() -> None:
    with op.batch_alter_table('profiles', schema=None) as batch_op:
        batch_op.add_column(sa.Column('institution', sa.String(length=200), nullable=False,
                                      server_default=''))
    conn = op.get_bind()
    conn.execute(sa.text(
        "UPDATE profiles SET institution = COALESCE("
        "(SELECT name_zh FROM institutions WHERE institutions.id = profiles.institution_id),"
        "(SELECT text FROM institution_claims "
        " WHERE institution_claims.id = profiles.institution_claim_id), '')"))
    with op.batch_alter_table('profiles', schema=None) as batch_op:
        batch_op.drop_index('ix_profiles_institution_id')
        batch_op.drop_constraint('fk_profiles_institution_claim_id', type_='foreignkey')
        batch_op.drop_constraint('fk_profiles_institution_id', type_='foreignkey')
        batch_op.drop_column('institution_claim_id')
        batch_op.drop_column('institution_id')
    op.drop_index('ix_credential_verifications_user_id', 'credential_verifications')
    op.drop_table('credential_verifications')
    op.drop_index('ix_institution_claims_state', 'institution_claims')
    op.drop_index('ix_institution_claims_user_id', 'institution_claims')
    op.drop_table('institution_claims')
    op.drop_index('ix_institution_keys_institution_id', 'institution_keys')
    op.drop_table('institution_keys')
    op.drop_table('institutions')
