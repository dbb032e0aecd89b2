"""Web worklist: people linked to identity-provider accounts (issuer and subject), several
roles per person, and failed sign-ins counted per user name and per client address. Runs: the
input issues of an NDJSON run, by kind.

Existing people keep their name, role and password; none is linked to an account yet. In the
OIDC mode they cannot sign in until ``prescreen users link`` links them (the sign-in page and
the log say so): a name claim alone never signs anyone in as a local user.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Several roles, comma-separated (SQLite does not enforce a VARCHAR's length).
        op.alter_column("web_users", "role", type_=sa.String(64))
        op.alter_column("web_sessions", "role", type_=sa.String(64))
    op.add_column("web_users", sa.Column("oidc_issuer", sa.String(255), nullable=True))
    op.add_column("web_users", sa.Column("oidc_subject", sa.String(255), nullable=True))
    op.create_index(
        "uq_web_users_identity", "web_users", ["oidc_issuer", "oidc_subject"], unique=True
    )
    op.add_column("runs", sa.Column("input_issues", sa.JSON, nullable=True))
    op.create_table(
        "sign_in_failures",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("window_start", sa.DateTime(), nullable=False),
        sa.Column("locked_until", sa.DateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("sign_in_failures")
    op.drop_index("uq_web_users_identity", table_name="web_users")
    with op.batch_alter_table("web_users") as users:
        users.drop_column("oidc_subject")
        users.drop_column("oidc_issuer")
    with op.batch_alter_table("runs") as runs:
        runs.drop_column("input_issues")
