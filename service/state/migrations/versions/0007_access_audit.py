"""The access audit: every patient page viewed, decision recorded and list exported, and where
sending it to the FHIR server as an AuditEvent stands; and when each candidate was last screened
(the overview's "last screened")."""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "access_audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("user_name", sa.String(128), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("via", sa.String(8), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("trial", sa.String(64), nullable=False, server_default=""),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.Column("client_address", sa.String(64), nullable=False, server_default=""),
        sa.Column("fhir_state", sa.String(8), nullable=False, server_default=""),
        sa.Column("fhir_tries", sa.Integer, nullable=False, server_default="0"),
        sa.Column("fhir_next_at", sa.DateTime(), nullable=True),
        sa.Column("fhir_error", sa.String(64), nullable=False, server_default=""),
        sa.Column("uuid", sa.String(36), nullable=False, unique=True),
    )
    op.create_index("ix_access_audit_at", "access_audit", ["at"])
    op.create_index("ix_access_audit_user_name", "access_audit", ["user_name"])
    op.create_index("ix_access_audit_patient_id", "access_audit", ["patient_id"])
    op.create_index("ix_access_audit_fhir_state", "access_audit", ["fhir_state"])
    op.add_column("candidates", sa.Column("screened_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    # Not a batch: on SQLite that copies the table and loses its verdict-history triggers
    # (0004); SQLite drops a column itself since 3.35.
    op.execute("ALTER TABLE candidates DROP COLUMN screened_at")
    op.drop_table("access_audit")
