"""Alembic environment: the URL comes from the service configuration, never from a file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from service.state.models import Base

url = context.config.get_main_option("sqlalchemy.url")
if not url:
    raise RuntimeError("no database URL given to the migrations")
engine = create_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
