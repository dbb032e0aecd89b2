"""Web worklist: who each patient is (name, MRN, birth date, sex), decisions kept while their
author signs in again, and the record of screening-log exports."""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patient_details",
        sa.Column("patient_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("name_key", sa.String(200), nullable=False, server_default=""),
        sa.Column("mrn", sa.String(200), nullable=False, server_default=""),
        sa.Column("mrn_key", sa.String(200), nullable=False, server_default=""),
        sa.Column("birth_date", sa.String(10), nullable=False, server_default=""),
        sa.Column("sex", sa.String(32), nullable=False, server_default=""),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_patient_details_mrn_key", "patient_details", ["mrn_key"])
    op.create_table(
        "decision_drafts",
        sa.Column("key_hash", sa.String(64), primary_key=True),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("trial", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False, server_default=""),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("expected_version", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_decision_drafts_created_at", "decision_drafts", ["created_at"])
    op.create_table(
        "exports",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("exported_by", sa.String(128), nullable=False),
        sa.Column("via", sa.String(8), nullable=False),
        sa.Column("filters", sa.JSON, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False, server_default="0"),
        sa.Column("exported_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_exports_exported_at", "exports", ["exported_at"])
    # The worklist joins candidates to these rows by patient, and lists a patient's rows.
    op.create_index("ix_candidates_patient_id", "candidates", ["patient_id"])


def downgrade() -> None:
    op.drop_index("ix_candidates_patient_id", "candidates")
    for table in ("exports", "decision_drafts", "patient_details"):
        op.drop_table(table)
