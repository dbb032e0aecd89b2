"""Web worklist follow-up: who a row is assigned to, its follow-up date, a person's flag for
review of a patient the rules exclude, and what people did besides decisions (notes,
assignments, dates, flags); each row's count of criteria left to check, and indexes for sorting
and filtering the worklist."""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "follow_ups",
        sa.Column("candidate_id", sa.Integer, primary_key=True),
        sa.Column("assignee", sa.String(128), nullable=True),
        sa.Column("follow_up_on", sa.Date(), nullable=True),
        sa.Column("review_reason", sa.Text, nullable=False, server_default=""),
        sa.Column("review_note", sa.Text, nullable=False, server_default=""),
        sa.Column("review_by", sa.String(128), nullable=False, server_default=""),
        sa.Column("review_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_follow_ups_assignee", "follow_ups", ["assignee"])
    op.create_index("ix_follow_ups_follow_up_on", "follow_ups", ["follow_up_on"])
    op.create_table(
        "activities",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("candidate_id", sa.Integer, nullable=False),
        sa.Column("who", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
        sa.Column("at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_activities_candidate_id_at", "activities", ["candidate_id", "at"])
    # The criteria still unknown of each row, kept with it: the worklist sorts by this number
    # without reading every row's verdict line.
    op.add_column(
        "candidates",
        sa.Column("unknown_count", sa.Integer, nullable=False, server_default="0"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "UPDATE candidates SET unknown_count = (SELECT count(*) FROM "
            "json_each(result -> 'criteria') AS c WHERE c.value ->> 'result' = 'unknown') "
            "WHERE json_typeof(result -> 'criteria') = 'object'"
        )
    else:
        op.execute(
            "UPDATE candidates SET unknown_count = (SELECT count(*) FROM "
            "json_each(candidates.result, '$.criteria') AS c "
            "WHERE json_extract(c.value, '$.result') = 'unknown') "
            "WHERE json_type(candidates.result, '$.criteria') = 'object'"
        )
    # "New" is "opened by nobody": looked up by candidate, whoever opened it.
    op.create_index("ix_seen_marks_candidate_id", "seen_marks", ["candidate_id"])
    # The worklist filters by status (and trial) before it sorts a page.
    op.create_index("ix_candidates_status_trial", "candidates", ["status", "trial"])
    op.create_index("ix_decisions_candidate_id_at", "decisions", ["candidate_id", "decided_at"])


def downgrade() -> None:
    op.drop_index("ix_decisions_candidate_id_at", "decisions")
    op.drop_index("ix_candidates_status_trial", "candidates")
    op.drop_index("ix_seen_marks_candidate_id", "seen_marks")
    # Not a batch: on SQLite that copies the table and loses its verdict-history triggers
    # (0004); SQLite drops a column itself since 3.35.
    op.execute("ALTER TABLE candidates DROP COLUMN unknown_count")
    op.drop_table("activities")
    op.drop_table("follow_ups")
