"""Schema migrations: the Alembic revisions shipped inside the package.

``alembic upgrade head`` at the repository root, ``simpleflow migrate`` and
``simpleflow.db.migrate()`` all apply the same revision files from
``simpleflow/db/migrations/versions``. simpleflow keeps its own version table
(``simpleflow_alembic_version``), so it never collides with an application's
own Alembic history in the same database.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, inspect, text

from simpleflow.core.errors import MigrationError
from simpleflow.db.database import Database

if TYPE_CHECKING:  # Alembic is imported when a migration runs, not with simpleflow
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

VERSION_TABLE = "simpleflow_alembic_version"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def script_directory() -> ScriptDirectory:
    """The package's revision files, without needing an alembic.ini."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config)


def configure_context(context: EnvironmentContext, connection: Connection, schema: str | None) -> None:
    """The one configuration both ``alembic`` (via alembic/env.py) and ``migrate()`` use."""
    from simpleflow.db.schema import metadata

    if schema:
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        connection.execute(text(f'SET LOCAL search_path TO "{schema}"'))
        # Alembic's own connection must see the schema (search_path) and the revisions
        # must create tables in it; the translate map does the latter.
        connection = connection.execution_options(schema_translate_map={None: schema})
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        version_table_schema=schema,
        include_schemas=False,
        # Alembic looks for its version table under the schema name, but lists this
        # schema's tables under None: keep autogenerate from proposing to drop it.
        include_name=lambda name, type_, parents: not (type_ == "table" and name == VERSION_TABLE),
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=False,
    )


def migration_lock_key(schema: str | None) -> int:
    """The PostgreSQL advisory lock key that serializes migrations of one schema (a
    signed 64-bit number derived from the schema name, the same in every process)."""
    digest = hashlib.sha256(f"simpleflow.migrate:{schema or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _lock_for_migration(connection: Connection, schema: str | None) -> None:
    """PostgreSQL: wait for any other process migrating this schema, then hold the lock
    until this migration's transaction ends. Without it, concurrent first starts race on
    CREATE SCHEMA/CREATE TABLE and fail with duplicate keys in pg_namespace/pg_type.
    SQLite needs nothing: the migration's BEGIN IMMEDIATE already serializes writers."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": migration_lock_key(schema)})


def _run(db: Database, fn: Any, destination: str, sql_verb: str) -> None:
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext

    script = script_directory()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    try:
        with db.engine.begin() as connection:
            _lock_for_migration(connection, db.schema)
            with EnvironmentContext(config, script, fn=fn, destination_rev=destination) as context:
                configure_context(context, connection, db.schema)
                with context.begin_transaction():
                    context.run_migrations()
            drop_version_table_if_at_base(connection, db.schema)
    except MigrationError:
        raise
    except Exception as error:  # any failure here is a migration failure, with its cause
        raise MigrationError(f"could not {sql_verb} the simpleflow schema: {error}") from error


def drop_version_table_if_at_base(connection: Connection, schema: str | None) -> None:
    """After ``downgrade base`` nothing of simpleflow's is left, not even its version table."""
    from alembic.runtime.migration import MigrationContext

    ctx = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "version_table_schema": schema}
    )
    if ctx.get_current_heads() == () and inspect(connection).has_table(VERSION_TABLE, schema=schema):
        ctx._version.drop(connection)


def upgrade(target: str | Engine | Database, revision: str = "head") -> None:
    """Migrate the database up to ``revision`` (default: the newest)."""
    db = Database.open(target)
    try:
        _run(db, lambda rev, context: script_directory()._upgrade_revs(revision, rev), revision, "upgrade")
    finally:
        db.close() if db is not target else None


def downgrade(target: str | Engine | Database, revision: str) -> None:
    """Migrate the database down to ``revision`` (``base`` removes every simpleflow table)."""
    db = Database.open(target)
    try:
        _run(db, lambda rev, context: script_directory()._downgrade_revs(revision, rev), revision, "downgrade")
    finally:
        db.close() if db is not target else None


def current(target: str | Engine | Database) -> tuple[str, ...]:
    """The revision(s) the database is at; empty when simpleflow was never migrated."""
    from alembic.runtime.migration import MigrationContext

    db = Database.open(target)
    try:
        with db.engine.connect() as connection:
            ctx = MigrationContext.configure(
                connection, opts={"version_table": VERSION_TABLE, "version_table_schema": db.schema}
            )
            return tuple(ctx.get_current_heads())
    finally:
        db.close() if db is not target else None


def head() -> str:
    """The newest revision shipped with this version of simpleflow."""
    heads = script_directory().get_heads()
    return heads[0]


def migrate(target: str | Engine | Database) -> None:
    """Apply every pending migration (the same revisions as ``alembic upgrade head``)."""
    upgrade(target, "head")
