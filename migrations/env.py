"""Alembic environment: runs on the engine audience-sync passes in, else on alembic.ini's URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine, engine_from_config, pool

from audience_sync.store.migrate import compare_type
from audience_sync.store.migration_lock import migration_lock
from audience_sync.store.schema import Base

target_metadata = Base.metadata
config = context.config


def run_migrations_online() -> None:
    """Migrate under the state database's migration lock (``store/migration_lock.py``), taken before Alembic reads
    the version: an upgrade that waited for another one finds the revision that one reached.

    On PostgreSQL each migration is its own transaction; on SQLite the lock is one transaction around them all,
    DDL included (Alembic sees a transaction already begun and opens none of its own).
    """
    engine = config.attributes.get("engine")
    if not isinstance(engine, Engine):
        engine = engine_from_config(
            config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
        )
    with engine.connect() as connection, migration_lock(connection):
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            transaction_per_migration=True,
            compare_type=compare_type,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("audience-sync migrations run online only: use `audience-sync db upgrade`")
run_migrations_online()
