"""The worker registry: one row per running poller, with its heartbeat and health."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, select, update

from simpleflow.db.dialect_sql import db_now
from simpleflow.db.schema import workflow_registry
from simpleflow.store.base import StoreBase

reg = workflow_registry.c


class WorkerStore(StoreBase):
    """All SQL about ``workflow_registry``."""

    def register(
        self,
        conn: Connection,
        worker_id: str,
        host: str,
        pid: int,
        types: list[str],
        prefixes: list[str],
        concurrency: int,
    ) -> None:
        """Insert or refresh this worker's row."""
        values = {
            "worker_id": worker_id,
            "host": host,
            "pid": pid,
            "types": types,
            "prefixes": prefixes,
            "concurrency": concurrency,
            "health": None,
        }
        stmt = self.dialect.insert(workflow_registry).values(**values, started_at=db_now(), heartbeat_at=db_now())
        stmt = stmt.on_conflict_do_update(
            index_elements=[reg.worker_id],
            set_={
                **{k: v for k, v in values.items() if k != "worker_id"},
                "started_at": db_now(),
                "heartbeat_at": db_now(),
            },
        )
        self.x(conn, stmt)

    def heartbeat(self, conn: Connection, worker_id: str, health: dict[str, Any] | None) -> None:
        """The worker is alive; ``health`` lists its background services that keep failing."""
        self.x(
            conn,
            update(workflow_registry)
            .where(reg.worker_id == worker_id)
            .values(heartbeat_at=db_now(), health=health or None),
        )

    def unregister(self, conn: Connection, worker_id: str) -> None:
        self.x(conn, delete(workflow_registry).where(reg.worker_id == worker_id))

    def list(self, conn: Connection) -> list[dict[str, Any]]:
        """Every registered worker with its heartbeat age in seconds (by the database clock)."""
        rows = self.x(conn, select(workflow_registry, db_now().label("now")).order_by(reg.worker_id))
        out = []
        for r in rows:
            row = dict(r._mapping)
            row["heartbeat_age_seconds"] = max(0.0, (row.pop("now") - row["heartbeat_at"]).total_seconds())
            out.append(row)
        return out
