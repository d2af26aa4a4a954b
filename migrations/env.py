"""Alembic environment: runs on the engine audience-sync passes in, else on alembic.ini's URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic import context
from sqlalchemy import Connection, Engine, engine_from_config, event, pool

from audience_sync.store.migrate import compare_type
from audience_sync.store.schema import Base

target_metadata = Base.metadata
config = context.config


@contextmanager
def _transactional_ddl(connection: Connection) -> Iterator[None]:
    """SQLite: make each migration one real transaction, DDL included.

    Python's sqlite3 module begins a transaction only before INSERT, UPDATE or DELETE, so a migration's CREATE
    TABLE committed on its own: a process killed halfway through a migration left, say, a new table behind
    without the revision that made it, and every later upgrade failed on "table already exists". Here the
    module's own transaction handling is switched off and every transaction starts with an explicit BEGIN
    (SQLAlchemy's recipe for pysqlite), for this connection and only while the migrations run.
    """
    if connection.dialect.name != "sqlite":
        yield
        return
    dbapi = connection.connection.driver_connection
    connection.rollback()  # nothing may be open when the module stops managing transactions
    previous = dbapi.isolation_level
    dbapi.isolation_level = None

    def begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    event.listen(connection, "begin", begin)
    try:
        yield
    finally:
        event.remove(connection, "begin", begin)
        connection.rollback()
        dbapi.isolation_level = previous


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if not isinstance(engine, Engine):
        engine = engine_from_config(
            config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
        )
    with engine.connect() as connection, _transactional_ddl(connection):
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
