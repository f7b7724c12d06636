"""Alembic environment: runs on the connection that `robot.db.upgrade` hands in."""

from alembic import context
from sqlalchemy import Connection

# The current models, on purpose (unlike the revisions, which are frozen and import nothing
# from robot): autogenerate compares the database with them, and Alembic gives new revisions
# their naming convention for names not fixed with op.f().
from robot.outbox.schema import metadata

config = context.config
connection: Connection | None = config.attributes.get("connection")
if connection is None:  # plain `alembic upgrade head` with sqlalchemy.url set
    from sqlalchemy import create_engine

    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite:///robot.db")
    with engine.begin() as own_connection:
        context.configure(connection=own_connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
