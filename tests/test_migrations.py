"""Migrations: the revision files build exactly ``simpleflow.db.schema``, on both databases."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from plans import hot_plan

from simpleflow import Client
from simpleflow.core.errors import ConfigurationError
from simpleflow.db.database import Database
from simpleflow.db.migrate import (
    MIGRATIONS_DIR,
    VERSION_TABLE,
    alongside,
    configure_context,
    current,
    downgrade,
    head,
    migrate,
    not_simpleflow,
    script_directory,
    upgrade,
)
from simpleflow.db.schema import TABLES, metadata
from simpleflow.store import Store

REPO = Path(__file__).resolve().parent.parent
SIMPLEFLOW_TABLES = {t.name for t in TABLES}


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database.open(db_url)
    yield database
    database.close()


def table_names(db: Database) -> set[str]:
    with db.engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names(schema=db.schema))


def schema_diff(db: Database, *, ignore_version_table: bool = True) -> list[Any]:
    """Autogenerate's differences between the database and ``schema.metadata`` (types and
    server defaults included), with the migration context configured exactly as
    ``alembic``/``migrate()`` configure it."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.engine.connect() as conn, EnvironmentContext(config, script_directory()) as env:
        configure_context(env, conn, db.schema)
        context = env.get_context()
        context.opts["compare_type"] = True
        context.opts["compare_server_default"] = True
        diffs = list(compare_metadata(context, metadata))
        conn.rollback()
    if ignore_version_table:  # reported on its own by test_autogenerate_keeps_the_version_table
        diffs = [d for d in diffs if not _is_version_table_drop(d)]
    return diffs


def _is_version_table_drop(diff: Any) -> bool:
    return isinstance(diff, tuple) and diff[0] == "remove_table" and diff[1].name == VERSION_TABLE


def test_upgrade_builds_exactly_the_schema(db: Database) -> None:
    assert current(db) == ()
    upgrade(db)
    assert current(db) == (head(),)
    assert table_names(db) == SIMPLEFLOW_TABLES | {VERSION_TABLE}
    assert schema_diff(db) == []


def test_autogenerate_keeps_the_version_table(db: Database) -> None:
    """``alembic revision --autogenerate`` must not propose dropping simpleflow's own
    version table (a new revision generated that way would delete the migration history)."""
    upgrade(db)
    assert schema_diff(db, ignore_version_table=False) == []


def test_indexes_and_constraints_exist(db: Database) -> None:
    upgrade(db)
    with db.engine.connect() as conn:
        inspector = sa.inspect(conn)
        for table in TABLES:
            expected = {ix.name for ix in table.indexes}
            found = {ix["name"] for ix in inspector.get_indexes(table.name, schema=db.schema)}
            assert expected <= found, (table.name, expected - found)
        checks = {c["name"] for c in inspector.get_check_constraints("workflow_run", schema=db.schema)}
        assert {"ck_workflow_run_status", "ck_workflow_run_max_attempts"} <= checks
        fks = inspector.get_foreign_keys("workflow_event", schema=db.schema)
        assert [fk["referred_table"] for fk in fks] == ["workflow_run"]
        assert fks[0]["options"].get("ondelete") == "CASCADE"


def test_check_constraints_are_enforced(client: Client) -> None:
    rid = client.submit("a.b", {}).execute()
    for values in ({"status": "bogus"}, {"max_attempts": 0}):
        with pytest.raises(sa.exc.IntegrityError), client.db.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE workflow_run SET " + ", ".join(f"{k} = :{k}" for k in values) + " WHERE id = :id")
                if client.db.dialect.name == "sqlite"
                else sa.text(
                    f'UPDATE "{client.db.schema}".workflow_run SET '
                    + ", ".join(f"{k} = :{k}" for k in values)
                    + " WHERE id = :id"
                ),
                {**values, "id": rid},
            )
    assert client.get_run(rid).status == "pending"


def test_upgrade_twice_is_a_noop(db: Database, db_url: str) -> None:
    upgrade(db_url)
    with Client(db_url) as c:
        rid = c.submit("a.b", {"kept": True}).execute()
        c.auto_migrate()
        upgrade(db_url)
        migrate(db_url)
        assert c.get_run(rid).payload == {"kept": True}
    assert current(db) == (head(),)
    assert schema_diff(db) == []


def test_downgrade_base_removes_everything(db: Database, db_url: str) -> None:
    upgrade(db_url)
    with Client(db_url) as c:
        c.submit("a.b", {}).execute()
    downgrade(db_url, "base")
    assert table_names(db) == set()
    assert current(db) == ()
    # and it comes back
    upgrade(db_url)
    assert table_names(db) == SIMPLEFLOW_TABLES | {VERSION_TABLE}
    with Client(db_url) as c:
        assert c.list_runs() == []


def test_own_version_table_leaves_application_alembic_alone(db: Database, db_url: str) -> None:
    """An application's own ``alembic_version`` in the same schema is not touched."""
    with db.engine.begin() as conn:
        if db.schema:
            conn.execute(sa.text(f'CREATE SCHEMA "{db.schema}"'))
        prefix = f'"{db.schema}".' if db.schema else ""
        conn.execute(sa.text(f"CREATE TABLE {prefix}alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        conn.execute(sa.text(f"INSERT INTO {prefix}alembic_version VALUES ('app_rev_1')"))

    def app_versions() -> list[str]:
        with db.engine.connect() as conn:
            return list(conn.execute(sa.text(f"SELECT version_num FROM {prefix}alembic_version")).scalars())

    upgrade(db_url)
    assert app_versions() == ["app_rev_1"]
    assert current(db) == (head(),)
    with db.engine.connect() as conn:
        ours = conn.execute(sa.text(f"SELECT version_num FROM {prefix}{VERSION_TABLE}")).scalars().all()
    assert ours == [head()]
    upgrade(db_url)
    downgrade(db_url, "base")
    assert app_versions() == ["app_rev_1"]
    assert table_names(db) == {"alembic_version"}


# -- alongside(): simpleflow's revisions inside an application's env.py ------------------------
# (the real `alembic` command in an application project, from an installed wheel: tests/test_wheel.py)


def _app_environment(fn_name: str, destination: str | None) -> EnvironmentContext:
    """An EnvironmentContext as ``alembic.command.<fn_name>`` makes it for an application."""

    def fn(rev: Any, context: Any) -> list[Any]:
        return []

    fn.__name__ = fn_name
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))  # any script directory
    return EnvironmentContext(config, script_directory(), fn=fn, destination_rev=destination)


@pytest.mark.parametrize(
    ("command", "destination", "expected"),
    [
        ("upgrade", "head", "at head"),
        ("upgrade", "+1", "at head"),
        ("downgrade", "-1", "untouched"),
        ("show_current", None, "untouched"),
        ("do_stamp", "head", "untouched"),
    ],
)
def test_alongside_follows_the_application_command(
    db: Database, app_engine: sa.Engine, db_schema: str | None, command: str, destination: str | None, expected: str
) -> None:
    with (
        app_engine.connect() as connection,
        alongside(_app_environment(command, destination), connection, schema=db_schema),
    ):
        # the application's own migrations run here, on its connection, outside simpleflow's schema
        assert connection.get_execution_options().get("schema_translate_map") is None
        if db_schema:
            assert db_schema not in connection.execute(sa.text("SHOW search_path")).scalar_one()
    assert current(db) == ((head(),) if expected == "at head" else ())


def test_alongside_downgrade_base_removes_simpleflow_after_the_application(
    db: Database, app_engine: sa.Engine, db_schema: str | None
) -> None:
    upgrade(db)
    with (
        app_engine.connect() as connection,
        alongside(_app_environment("downgrade", "base"), connection, schema=db_schema),
    ):
        assert current(db) == (head(),)  # still there while the application's revisions run
    assert current(db) == ()
    assert table_names(db) == set()


def test_alongside_rejects_what_it_cannot_use(app_engine: sa.Engine, db_kind: str) -> None:
    with app_engine.connect() as connection:
        with pytest.raises(ConfigurationError, match="from alembic import context"), alongside(object(), connection):  # type: ignore[arg-type]
            pass
        if db_kind == "sqlite":
            with (
                pytest.raises(ConfigurationError, match="SQLite has no schemas"),
                alongside(_app_environment("upgrade", "head"), connection, schema="workflow"),
            ):
                pass
        else:
            with (
                pytest.raises(ConfigurationError, match="invalid schema name"),
                alongside(_app_environment("upgrade", "head"), connection, schema="no-such;schema"),
            ):
                pass


def test_not_simpleflow_hides_simpleflow_tables_from_autogenerate() -> None:
    assert not not_simpleflow(VERSION_TABLE, "table", {})
    assert all(not not_simpleflow(name, "table", {}) for name in SIMPLEFLOW_TABLES)
    assert not_simpleflow("app_order", "table", {})
    assert not_simpleflow("workflow_run", "column", {"table_name": "app_order"})


# -- the alembic CLI from the repository root ---------------------------------------------------


def alembic(*args: str, env_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SIMPLEFLOW_DATABASE_URL"}
    if env_url is not None:
        env["SIMPLEFLOW_DATABASE_URL"] = env_url
    proc = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"alembic {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_alembic_cli(db: Database, db_url: str) -> None:
    """``alembic upgrade head`` / ``downgrade base`` from the repository root, with the
    URL from SIMPLEFLOW_DATABASE_URL or from ``-x url=...`` (which wins)."""
    alembic("upgrade", "head", env_url=db_url)
    assert table_names(db) == SIMPLEFLOW_TABLES | {VERSION_TABLE}
    assert current(db) == (head(),)
    assert schema_diff(db) == []
    with Client(db_url) as c:  # the CLI and migrate() agree
        c.auto_migrate()
        c.submit("a.b", {}).execute()
    alembic("-x", f"url={db_url}", "downgrade", "base", env_url="mysql://must-not-be-used/db")
    assert table_names(db) == set()
    assert current(db) == ()


def test_alembic_cli_takes_the_url_from_the_ini(db: Database, db_url: str, tmp_path: Path) -> None:
    """An ini section of the application's own (``sqlalchemy.url``) is enough, without SIMPLEFLOW_DATABASE_URL."""
    ini = tmp_path / "alembic.ini"
    ini.write_text(f"[alembic]\nscript_location = {MIGRATIONS_DIR}\nsqlalchemy.url = {db_url}\n")
    alembic("-c", str(ini), "upgrade", "head")
    assert current(db) == (head(),)
    alembic("-c", str(ini), "downgrade", "base")
    assert table_names(db) == set()


def test_alembic_cli_without_url_fails_clearly() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SIMPLEFLOW_DATABASE_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "SIMPLEFLOW_DATABASE_URL" in proc.stderr


# -- the claim uses the due index ---------------------------------------------------------------


def test_claim_uses_due_index(client: Client) -> None:
    db = client.db
    # a realistic table: many due runs of the claimed type, plus finished and other work
    client.submit_many([("claim.me", {"i": i}) for i in range(2000)])
    client.submit_many([("other.type", {"i": i}) for i in range(1000)])
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                f"UPDATE {'' if db.dialect.name == 'sqlite' else f'{chr(34)}{db.schema}{chr(34)}.'}workflow_run "
                "SET status = 'succeeded' WHERE type = 'other.type'"
            )
        )
        conn.exec_driver_sql("ANALYZE")

    store = Store(db)
    with db.engine.connect() as conn:
        tx = conn.begin()
        claimed = store.leases.claim(conn, "w1", store.leases.route_filter(["claim.me"], []), 10, 30.0)
        tx.rollback()
    assert len(claimed) == 10
    plan = hot_plan(db, ("lease_until", "ORDER BY"), {"n": 10, "w": "w1", "lease": 30.0, "after": ""})
    assert "ix_workflow_run_due" in plan, plan
