"""From a built wheel in a fresh venv outside the repository, as a user installs it.

The wheel is built once per module from a copy of the package sources, installed
(with its dependencies from the package index) into a venv under the test's temp
dir, and every command runs there with ``PYTHONPATH`` unset and the current
directory outside the repository, so nothing of the clone is importable:

- ``simpleflow --version`` and ``simpleflow.__version__`` name the pyproject version;
  the wheel is installed as the issue says, ``<wheel>[otel,web]`` (plus ``prometheus``),
  and each extra installs what it promises: the OpenTelemetry API the tracing uses,
  what ``simpleflow.web.create_app`` needs, what ``PrometheusMetrics`` needs;
- ``simpleflow migrate`` and ``examples/quickstart.py`` work;
- ``alembic upgrade head`` with a two-line ``alembic.ini`` naming the package's own
  environment (``script_location = simpleflow:db/migrations``), as the README says;
- an application with its own Alembic environment and revision applies simpleflow's
  revisions alongside its own with the ``alembic`` command (``alongside()`` in its
  env.py), each history in its own version table, and ``downgrade base`` removes both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from db_urls import drop_schema, split_db_url

from simpleflow.db.migrate import SCRIPT_LOCATION, VERSION_TABLE, head
from simpleflow.db.schema import TABLES

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli
    import tomli as tomllib

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
SIMPLEFLOW_TABLES = {t.name for t in TABLES}


@dataclass
class Installed:
    """A venv with the wheel installed, and a working directory outside the repository."""

    venv: Path
    home: Path

    def run(
        self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command of the venv (``simpleflow``, ``alembic``, ``python``) as a user would."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SIMPLEFLOW_", "VIRTUAL_ENV"))}
        base["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{base.get('PATH', '')}"
        base["VIRTUAL_ENV"] = str(self.venv)
        base["PYTHONUNBUFFERED"] = "1"
        base.update(env or {})
        executable = self.venv / "bin" / args[0]
        proc = subprocess.run(
            [str(executable), *args[1:]], cwd=cwd or self.home, env=base, capture_output=True, text=True, timeout=120
        )
        if check:
            assert proc.returncode == 0, (
                f"{' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    # Build from a copy so the build leaves no build/ or *.egg-info in the clone.
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "simpleflow", source / "simpleflow", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = root / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("*.whl")
    assert wheel.name == f"simpleflow_db-{PROJECT['version']}-py3-none-any.whl"

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            f"{wheel}[otel,web,prometheus]",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    home = root / "home"
    home.mkdir()
    return Installed(venv=venv, home=home)


def test_version_comes_from_the_installed_distribution(installed: Installed) -> None:
    assert installed.run("simpleflow", "--version").stdout == f"simpleflow {PROJECT['version']}\n"
    proc = installed.run("python", "-c", "import simpleflow; print(simpleflow.__version__); print(simpleflow.__file__)")
    version, where = proc.stdout.split()
    assert version == PROJECT["version"]
    assert Path(where).is_relative_to(installed.venv), f"imported {where}, not the installed wheel"
    # The extras brought what they promise.
    installed.run(
        "python",
        "-c",
        "import prometheus_client, simpleflow; "
        "simpleflow.PrometheusMetrics(registry=prometheus_client.CollectorRegistry())",
    )
    installed.run("python", "-c", "import simpleflow.web; simpleflow.web.create_app('sqlite://', no_auth=True)")
    installed.run(
        "python",
        "-c",
        "import opentelemetry.trace; from simpleflow.core import tracing; "
        "assert tracing._otel() is not None, 'the otel extra is installed but not used'",
    )


def test_migrate_and_quickstart(installed: Installed, db_url: str, tmp_path: Path) -> None:
    env = {"SIMPLEFLOW_DATABASE_URL": db_url}
    assert installed.run("simpleflow", "migrate", env=env).stdout.strip() == f"database at revision {head()}"
    quickstart = tmp_path / "quickstart.py"  # a copy: the clone's directory is not on sys.path either
    shutil.copy(REPO / "examples" / "quickstart.py", quickstart)
    proc = installed.run("python", str(quickstart), env=env)
    assert "processed 6 attempts" in proc.stdout
    assert "failed     2/2       ValueError: this handler always fails" in proc.stdout


# -- Alembic ----------------------------------------------------------------------------------


def table_names(url: str, schema: str | None) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names(schema=schema))
    finally:
        engine.dispose()


def versions(url: str, table: str, schema: str | None) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            name = f'"{schema}".{table}' if schema else table
            return list(conn.execute(sa.text(f"SELECT version_num FROM {name}")).scalars())
    finally:
        engine.dispose()


def test_alembic_upgrade_head_with_only_the_wheel(installed: Installed, db_url: str, tmp_path: Path) -> None:
    """The README's two-line alembic.ini: the environment and revisions come from the package."""
    readme = (REPO / "README.md").read_text()
    ini = readme[readme.index("```ini\n[alembic]\n") + len("```ini\n") :].split("```", 1)[0]
    assert f"script_location = {SCRIPT_LOCATION}" in ini
    (tmp_path / "alembic.ini").write_text(ini)
    env = {"SIMPLEFLOW_DATABASE_URL": db_url}
    url, schema = split_db_url(db_url)
    installed.run("alembic", "upgrade", "head", cwd=tmp_path, env=env)
    assert table_names(url, schema) == SIMPLEFLOW_TABLES | {VERSION_TABLE}
    assert head() in installed.run("alembic", "current", cwd=tmp_path, env=env).stdout
    installed.run("alembic", "downgrade", "base", cwd=tmp_path, env=env)
    assert table_names(url, schema) == set()


APP_INI = """\
[alembic]
script_location = %(here)s/migrations
path_separator = os
"""

#: The application's env.py: Alembic's template, plus the lines the README documents.
APP_ENV = """\
import os

import sqlalchemy as sa
from alembic import context

from simpleflow.db.migrate import alongside, not_simpleflow

target_metadata = sa.MetaData()
sa.Table("app_order", target_metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("item", sa.Text))

engine = sa.create_engine(os.environ["APP_DATABASE_URL"], poolclass=sa.pool.NullPool)
with engine.connect() as connection, alongside(context, connection, schema=os.environ.get("APP_SIMPLEFLOW_SCHEMA")):
    context.configure(connection=connection, target_metadata=target_metadata, include_name=not_simpleflow)
    with context.begin_transaction():
        context.run_migrations()
"""

APP_REVISION = """\
import sqlalchemy as sa
from alembic import op

revision = "app_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("app_order", sa.Column("id", sa.Integer, primary_key=True), sa.Column("item", sa.Text))


def downgrade():
    op.drop_table("app_order")
"""


@pytest.fixture
def app_database(db_url: str) -> Iterator[tuple[str, dict[str, str], str | None]]:
    """(URL for the test to inspect the application's tables, the app's environment, its schema).

    On PostgreSQL the application lives in a schema of its own (its connections'
    search_path) and simpleflow in ``db_url``'s schema, both dropped afterwards.
    """
    url, simpleflow_schema = split_db_url(db_url)
    if simpleflow_schema is None:
        yield url, {"APP_DATABASE_URL": url}, None
        return
    app_schema = f"a_{uuid.uuid4().hex[:12]}"
    base = db_url.split("?", 1)[0]
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{app_schema}"'))
    engine.dispose()
    app_url = f"{url}?options=-csearch_path%3D{app_schema}"
    try:
        yield url, {"APP_DATABASE_URL": app_url, "APP_SIMPLEFLOW_SCHEMA": simpleflow_schema}, app_schema
    finally:
        drop_schema(base, app_schema)


def test_application_alembic_applies_simpleflow_alongside_its_own(
    installed: Installed, db_url: str, tmp_path: Path, app_database: tuple[str, dict[str, str], str | None]
) -> None:
    url, env, app_schema = app_database
    simpleflow_schema = split_db_url(db_url)[1]
    app = tmp_path / "app"
    (app / "migrations" / "versions").mkdir(parents=True)
    (app / "alembic.ini").write_text(APP_INI)
    (app / "migrations" / "env.py").write_text(APP_ENV)
    (app / "migrations" / "versions" / "app_0001.py").write_text(APP_REVISION)

    def alembic(*args: str) -> str:
        return installed.run("alembic", *args, cwd=app, env=env).stdout

    def app_tables() -> set[str]:
        return table_names(url, app_schema)

    alembic("current")  # a read-only command changes nothing
    assert app_tables() == set()

    alembic("upgrade", "head")
    sf_tables = SIMPLEFLOW_TABLES | {VERSION_TABLE}
    if simpleflow_schema:  # PostgreSQL: each in its own schema
        assert app_tables() == {"app_order", "alembic_version"}
        assert table_names(url, simpleflow_schema) == sf_tables
    else:  # SQLite: side by side
        assert app_tables() == {"app_order", "alembic_version"} | sf_tables
    assert versions(url, "alembic_version", app_schema) == ["app_0001"]
    assert versions(url, VERSION_TABLE, simpleflow_schema or app_schema) == [head()]

    # Autogenerate sees the application's schema only: nothing to add, nothing to drop.
    assert "No new upgrade operations detected" in alembic("check")
    alembic("upgrade", "head")  # again: a no-op for both histories

    # Downgrading the application to one of its revisions leaves simpleflow alone.
    alembic("downgrade", "-1")
    assert "app_order" not in app_tables()
    assert versions(url, VERSION_TABLE, simpleflow_schema or app_schema) == [head()]
    alembic("upgrade", "head")
    assert "app_order" in app_tables()

    alembic("downgrade", "base")
    assert app_tables() == {"alembic_version"}  # Alembic keeps the application's (empty) version table
    assert versions(url, "alembic_version", app_schema) == []
    if simpleflow_schema:
        assert table_names(url, simpleflow_schema) == set()
