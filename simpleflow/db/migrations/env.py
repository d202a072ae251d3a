"""Alembic environment for `alembic upgrade head` at the repository root.

The database comes from `-x url=...` or SIMPLEFLOW_DATABASE_URL; the configuration
is the same function `simpleflow.db.migrate()` uses.
"""

from __future__ import annotations

import os

from alembic import context

from simpleflow.db.database import Database
from simpleflow.core.errors import ConfigurationError
from simpleflow.db.migrate import configure_context, drop_version_table_if_at_base

url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("SIMPLEFLOW_DATABASE_URL")
if not url:
    raise ConfigurationError("set SIMPLEFLOW_DATABASE_URL or pass -x url=... to alembic")

db = Database.open(url)
try:
    with db.engine.begin() as connection:
        configure_context(context, connection, db.schema)
        with context.begin_transaction():
            context.run_migrations()
        drop_version_table_if_at_base(connection, db.schema)
finally:
    db.close()
