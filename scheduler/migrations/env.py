"""Alembic environment: Cobalt's own settings give the URL; the metadata is SQLModel's."""

from __future__ import annotations

import models
from alembic import context
from scheduler.config import load_settings
from scheduler.db import make_engine

config = context.config
target_metadata = models.load_all()  # every table, not only those a command has used


def run_migrations_online() -> None:
    engine = config.attributes.get("engine") or make_engine(load_settings().database_url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            include_object=models.compared,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("Cobalt runs its migrations online only: use `cobalt db upgrade`")
run_migrations_online()
