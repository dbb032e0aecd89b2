"""Run ownership leases, alert retry leases, per-patient write-back claims."""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable columns: existing rows simply have no owner and no lease (free to take).
    op.add_column("runs", sa.Column("owner", sa.String(40), nullable=True))
    op.add_column("runs", sa.Column("lease_until", sa.DateTime(), nullable=True))
    op.add_column("alerts", sa.Column("lease_until", sa.DateTime(), nullable=True))
    op.create_table(
        "writeback_claims",
        sa.Column("trial", sa.String(64), primary_key=True),
        sa.Column("patient_id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(40), nullable=False),
        sa.Column("lease_until", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("writeback_claims")
    # Batch mode: SQLite rebuilds the table, PostgreSQL alters it in place.
    with op.batch_alter_table("alerts") as alerts:
        alerts.drop_column("lease_until")
    with op.batch_alter_table("runs") as runs:
        runs.drop_column("lease_until")
        runs.drop_column("owner")
