"""Schema migrations: the Alembic revisions shipped inside the package.

``simpleflow migrate``, ``simpleflow.db.migrate()``, ``alembic upgrade head`` with
``script_location = simpleflow:db/migrations`` (the package's own env.py) and an
application's env.py using ``alongside()`` all apply the same revision files from
``simpleflow/db/migrations/versions``. simpleflow keeps its own version table
(``simpleflow_alembic_version``), so it never collides with an application's own
Alembic history in the same database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, inspect, text

from simpleflow.core.errors import ConfigurationError, MigrationError
from simpleflow.db.database import DEFAULT_SCHEMA, Database, _check_schema
from simpleflow.db.dialect import dialect_for, uses_batch_migrations
from simpleflow.db.schema import metadata

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
    """The one configuration both ``alembic`` (via the packaged env.py) and ``migrate()`` use.

    First it waits for any other process migrating the same schema (PostgreSQL: an
    advisory lock held until this transaction ends; SQLite: BEGIN IMMEDIATE already
    serializes writers): concurrent first starts would otherwise race on CREATE
    SCHEMA/CREATE TABLE and fail with duplicate keys in pg_namespace/pg_type.
    """
    lock_migrations(connection, schema)
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
        render_as_batch=uses_batch_migrations(connection),
        transaction_per_migration=False,
    )


def migration_lock_key(schema: str | None) -> int:
    """The advisory lock key that serializes migrations of one schema (a signed 64-bit
    number derived from the schema name, the same in every process)."""
    digest = hashlib.sha256(f"simpleflow.migrate:{schema or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_migrations(connection: Connection, schema: str | None) -> None:
    """Wait for other processes migrating ``schema`` and keep them waiting until this
    connection's transaction ends."""
    dialect_for(connection.engine).lock_until_commit(connection, migration_lock_key(schema))


def _apply(connection: Connection, schema: str | None, revision: str, direction: str) -> None:
    """Run simpleflow's revisions up or down to ``revision`` on ``connection``.

    The EnvironmentContext is used without ``with``: that would rebind (and then
    unbind) ``alembic.context``, which an application's env.py calling ``alongside``
    is still using.
    """
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext

    script = script_directory()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if direction == "upgrade":
        fn = lambda rev, context: script._upgrade_revs(revision, rev)  # noqa: E731
    else:
        fn = lambda rev, context: script._downgrade_revs(revision, rev)  # noqa: E731
    env = EnvironmentContext(config, script, fn=fn, destination_rev=revision)
    configure_context(env, connection, schema)
    with env.begin_transaction():
        env.run_migrations()
    drop_version_table_if_at_base(connection, schema)


def _run(db: Database, revision: str, direction: str) -> None:
    try:
        with db.engine.begin() as connection:
            _apply(connection, db.schema, revision, direction)
    except MigrationError:
        raise
    except Exception as error:  # any failure here is a migration failure, with its cause
        raise MigrationError(f"could not {direction} the simpleflow schema: {error}") from error


def drop_version_table_if_at_base(connection: Connection, schema: str | None) -> None:
    """After ``downgrade base`` nothing of simpleflow's is left, not even its version table."""
    from alembic.runtime.migration import MigrationContext

    ctx = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE, "version_table_schema": schema})
    if ctx.get_current_heads() == () and inspect(connection).has_table(VERSION_TABLE, schema=schema):
        ctx._version.drop(connection)


def upgrade(target: str | Engine | Database, revision: str = "head") -> None:
    """Migrate the database up to ``revision`` (default: the newest)."""
    db = Database.open(target)
    try:
        _run(db, revision, "upgrade")
    finally:
        db.close() if db is not target else None


def downgrade(target: str | Engine | Database, revision: str) -> None:
    """Migrate the database down to ``revision`` (``base`` removes every simpleflow table)."""
    db = Database.open(target)
    try:
        _run(db, revision, "downgrade")
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


# -- inside an application's own Alembic environment ---------------------------------

#: ``script_location`` (or ``alembic -n`` section) naming simpleflow's environment in the installed package.
SCRIPT_LOCATION = "simpleflow:db/migrations"


@contextmanager
def alongside(
    context: EnvironmentContext | ModuleType, connection: Connection, *, schema: str | None = None
) -> Iterator[None]:
    """Apply simpleflow's revisions as part of an application's own ``alembic`` command.

    In the application's env.py, around its own migrations::

        from simpleflow.db.migrate import alongside, not_simpleflow

        with engine.connect() as connection, alongside(context, connection):
            context.configure(connection=connection, target_metadata=target_metadata,
                              include_name=not_simpleflow)
            with context.begin_transaction():
                context.run_migrations()

    What it does follows the command being run:

    - ``alembic upgrade <anything>``: simpleflow's schema goes to its newest revision
      *before* the application's revisions run (so they may refer to its tables);
    - ``alembic downgrade base``: simpleflow's tables go too, *after* the application's;
    - any other command (``downgrade <rev>``, ``current``, ``stamp``, ``check``, ``--sql``)
      leaves simpleflow's schema alone.

    simpleflow's revisions come from the installed package and are recorded in their
    own version table (``simpleflow_alembic_version``), never in the application's.
    ``schema`` is where simpleflow's tables live on PostgreSQL (default ``workflow``,
    as for a URL without ``?schema``); it must be ``None`` on SQLite. The work runs in
    a transaction of its own, or inside the connection's if one is open (the caller
    commits that one).
    """
    environment = _environment(context)
    direction = _command_direction(environment)
    try:
        dialect = dialect_for(connection.engine)
    except ValueError as error:
        raise ConfigurationError(f"simpleflow runs on PostgreSQL (psycopg 3) or SQLite: {error}") from None
    if dialect.has_schemas:
        chosen: str | None = _check_schema(schema or DEFAULT_SCHEMA)
    else:
        if schema is not None:
            raise ConfigurationError(f"schema={schema!r} is for PostgreSQL; SQLite has no schemas: leave it out")
        chosen = None
    if direction == "upgrade":
        _apply_on(connection, chosen, "head", "upgrade")
    yield
    if direction == "downgrade" and environment.context_opts.get("destination_rev") == "base":
        _apply_on(connection, chosen, "base", "downgrade")


def _environment(context: EnvironmentContext | ModuleType) -> EnvironmentContext:
    """The running EnvironmentContext behind ``from alembic import context``.

    That module forwards its functions to the EnvironmentContext the command made,
    which it keeps as ``_proxy`` (so since Alembic 0.x; tests/test_wheel.py runs the
    real ``alembic`` command against the newest Alembic to catch a change).
    """
    from alembic.runtime.environment import EnvironmentContext

    environment = context if isinstance(context, EnvironmentContext) else getattr(context, "_proxy", None)
    if not isinstance(environment, EnvironmentContext):
        raise ConfigurationError(
            "alongside() takes alembic's context (`from alembic import context`) in an env.py that the "
            "alembic command is running"
        )
    return environment


def _command_direction(context: EnvironmentContext) -> str | None:
    """``upgrade``/``downgrade`` when the running command is ``alembic upgrade``/``downgrade`` online."""
    if context.is_offline_mode():
        return None
    # alembic.command.upgrade and .downgrade pass their work as functions of these names.
    name = getattr(context.context_opts.get("fn"), "__name__", None)
    return name if name in ("upgrade", "downgrade") else None


def _apply_on(connection: Connection, schema: str | None, revision: str, direction: str) -> None:
    """``_apply`` on an application's connection: its own transaction (or the open one),
    and the connection's search_path as it was."""
    try:
        transaction = nullcontext() if connection.in_transaction() else connection.begin()
        with transaction:
            # configure_context points the connection at simpleflow's schema (search_path for
            # this transaction, a schema_translate_map on the Connection): put both back.
            saved_map = connection.get_execution_options().get("schema_translate_map")
            saved_path = None
            if schema is not None:
                saved_path = connection.execute(text("SELECT current_setting('search_path')")).scalar_one()
            _apply(connection, schema, revision, direction)
            connection.execution_options(schema_translate_map=saved_map)
            if saved_path is not None:
                connection.execute(text("SELECT set_config('search_path', :path, true)"), {"path": saved_path})
    except Exception as error:  # any failure here is a migration failure, with its cause
        raise MigrationError(f"could not {direction} the simpleflow schema: {error}") from error


def not_simpleflow(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
    """``include_name`` for an application's ``context.configure``: autogenerate and
    ``alembic check`` ignore simpleflow's tables and version table (on SQLite they share
    the application's namespace)."""
    return not (type_ == "table" and (name == VERSION_TABLE or name in metadata.tables))
