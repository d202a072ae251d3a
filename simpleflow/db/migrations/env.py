"""Alembic environment of simpleflow's own revisions, shipped inside the package.

Used by the ``alembic`` command when an ``alembic.ini`` (or a section of one,
``alembic -n NAME``) says ``script_location = simpleflow:db/migrations``; the
repository's own alembic.ini points here too. The database comes from
``-x url=...``, else ``SIMPLEFLOW_DATABASE_URL``, else ``sqlalchemy.url`` of the
ini section. The configuration is the one ``simpleflow.migrate()`` uses, with
simpleflow's own version table (``simpleflow_alembic_version``).

(``simpleflow.migrate()`` and ``simpleflow migrate`` never run this file; an
application's own env.py uses ``simpleflow.db.migrate.alongside`` instead.)
"""

from __future__ import annotations

import os

from alembic import context

from simpleflow.core.errors import ConfigurationError
from simpleflow.db.database import Database
from simpleflow.db.migrate import configure_context, drop_version_table_if_at_base

url = (
    context.get_x_argument(as_dictionary=True).get("url")
    or os.environ.get("SIMPLEFLOW_DATABASE_URL")
    or context.config.get_main_option("sqlalchemy.url")
)
if not url:
    raise ConfigurationError(
        "no database for simpleflow's migrations: set SIMPLEFLOW_DATABASE_URL, pass -x url=... to alembic, "
        "or set sqlalchemy.url in the alembic.ini section"
    )
if context.is_offline_mode():
    raise ConfigurationError("simpleflow's migrations run against a database; --sql (offline mode) is not supported")

db = Database.open(url)
try:
    with db.engine.begin() as connection:
        configure_context(context, connection, db.schema)  # type: ignore[arg-type]  # the module proxies an EnvironmentContext
        with context.begin_transaction():
            context.run_migrations()
        drop_version_table_if_at_base(connection, db.schema)
finally:
    db.close()
