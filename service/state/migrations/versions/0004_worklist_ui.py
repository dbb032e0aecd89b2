"""Web worklist: local users, sessions, decision history, verdict history, last-seen marks.

The verdict history is kept by triggers on ``candidates``: a row per new candidate, and a row
whenever its verdict or one of its criteria's results changes (a re-screen that changes nothing
leaves none). Triggers see every write, whichever code path, process or replica makes it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


# {criterion id: result} of a candidate's verdict line, built in SQL.
_SQLITE_RESULTS = (
    "(SELECT coalesce(json_group_object(key, json_extract(value, '$.result')), '{{}}') "
    "FROM json_each({row}.result, '$.criteria'))"
)
_SQLITE_INSERT = (
    "INSERT INTO verdict_events (candidate_id, trial, patient_id, verdict, results, at) "
    "VALUES (NEW.id, NEW.trial, NEW.patient_id, NEW.verdict, "
    + _SQLITE_RESULTS.format(row="NEW")
    + ", NEW.updated_at);"
)
SQLITE_TRIGGERS = (
    f"CREATE TRIGGER candidates_verdict_insert AFTER INSERT ON candidates "
    f"BEGIN {_SQLITE_INSERT} END",
    "CREATE TRIGGER candidates_verdict_update AFTER UPDATE OF verdict, result ON candidates "
    "WHEN OLD.verdict IS NOT NEW.verdict OR "
    + _SQLITE_RESULTS.format(row="OLD")
    + " IS NOT "
    + _SQLITE_RESULTS.format(row="NEW")
    + f" BEGIN {_SQLITE_INSERT} END",
)
POSTGRESQL_TRIGGERS = (
    """
    CREATE FUNCTION prescreen_verdict_event() RETURNS trigger AS $$
    DECLARE
        new_results json;
        old_results json;
    BEGIN
        SELECT coalesce(json_object_agg(key, value->>'result'), '{}'::json) INTO new_results
        FROM json_each(NEW.result->'criteria');
        IF TG_OP = 'UPDATE' THEN
            SELECT coalesce(json_object_agg(key, value->>'result'), '{}'::json) INTO old_results
            FROM json_each(OLD.result->'criteria');
            IF OLD.verdict = NEW.verdict AND old_results::text = new_results::text THEN
                RETURN NEW;
            END IF;
        END IF;
        INSERT INTO verdict_events (candidate_id, trial, patient_id, verdict, results, at)
        VALUES (NEW.id, NEW.trial, NEW.patient_id, NEW.verdict, new_results, NEW.updated_at);
        RETURN NEW;
    END
    $$ LANGUAGE plpgsql
    """,
    "CREATE TRIGGER candidates_verdict_events AFTER INSERT OR UPDATE ON candidates "
    "FOR EACH ROW EXECUTE FUNCTION prescreen_verdict_event()",
)


def upgrade() -> None:
    op.create_table(
        "web_users",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("trials", sa.Text, nullable=False, server_default=""),
        sa.Column("password_hash", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "web_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("user_name", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("trials", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_web_sessions_user_name", "web_sessions", ["user_name"])
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("candidate_id", sa.Integer, nullable=False),
        sa.Column("trial", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("previous_status", sa.String(32), nullable=False, server_default=""),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("decided_by", sa.String(128), nullable=False),
        sa.Column("subject_version", sa.String(64), nullable=True),
        sa.Column("decided_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_decisions_candidate_id", "decisions", ["candidate_id"])
    op.create_table(
        "verdict_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("candidate_id", sa.Integer, nullable=False),
        sa.Column("trial", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("verdict", sa.String(32), nullable=False),
        sa.Column("results", sa.JSON, nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_verdict_events_candidate_id", "verdict_events", ["candidate_id"])
    op.create_table(
        "seen_marks",
        sa.Column("user_name", sa.String(128), primary_key=True),
        sa.Column("candidate_id", sa.Integer, primary_key=True),
        sa.Column("verdict", sa.String(32), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("results", sa.JSON, nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
    )
    # Candidates screened before this revision get one history entry each (their current
    # verdict, at their last update), so the worklist can sort them by when they were flagged.
    # Their per-criterion results are not copied: the row's result holds them.
    op.execute(
        "INSERT INTO verdict_events (candidate_id, trial, patient_id, verdict, results, at) "
        "SELECT id, trial, patient_id, verdict, '{}', updated_at FROM candidates"
    )
    if op.get_bind().dialect.name == "postgresql":
        for statement in POSTGRESQL_TRIGGERS:
            op.execute(statement)
    else:
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS candidates_verdict_events ON candidates")
        op.execute("DROP FUNCTION IF EXISTS prescreen_verdict_event()")
    else:
        op.execute("DROP TRIGGER IF EXISTS candidates_verdict_insert")
        op.execute("DROP TRIGGER IF EXISTS candidates_verdict_update")
    for table in ("seen_marks", "verdict_events", "decisions", "web_sessions", "web_users"):
        op.drop_table(table)
