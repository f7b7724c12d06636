"""PostgreSQL: NOTIFY email_robot_outbox after every INSERT into outbox, so that robots
waiting for work wake at once instead of at their next poll. SQLite has no NOTIFY: no-op.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "email_robot_outbox"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # FOR EACH STATEMENT: a bulk INSERT of a million rows is one notification, not a million.
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION email_robot_notify_outbox() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER outbox_notify_insert AFTER INSERT ON outbox "
        "FOR EACH STATEMENT EXECUTE FUNCTION email_robot_notify_outbox()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS outbox_notify_insert ON outbox")
    op.execute("DROP FUNCTION IF EXISTS email_robot_notify_outbox()")
