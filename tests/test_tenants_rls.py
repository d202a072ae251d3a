"""PostgreSQL row-level security: a restricted role sees only the tenant its session sets,
even with raw SQL; the owning role (workers, migrations) is not bound by it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from db_urls import _connect, drop_schema

from simpleflow import Client, Poller, admin
from simpleflow.core.errors import ConfigurationError, NotFound, ValidationError


@pytest.fixture
def rls(postgres_url: str) -> Iterator[dict[str, str]]:
    """A migrated schema, runs of acme and globex (written by the owner), and a login role
    granted with ``grant_tenant_role``."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    role = f"sf_app_{uuid.uuid4().hex[:8]}"
    owner_url = f"{postgres_url}?schema={schema}"
    with _connect(postgres_url) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        with Client(owner_url, tenant="acme") as acme, Client(owner_url, tenant="globex") as globex:
            acme.auto_migrate()
            ids = {"acme": acme.submit("report.v1", {"n": 1}).execute()}
            ids["globex"] = globex.submit("report.v1", {"n": 2}).execute()
            globex.signal(ids["globex"], "go")
        statements = admin.grant_tenant_role(owner_url, role)
        assert any("GRANT SELECT, INSERT, UPDATE, DELETE" in s for s in statements)
        role_url = postgres_url.replace("://postgres@", f"://{role}@", 1)
        yield {"schema": schema, "role_url": role_url, "owner_url": owner_url, **ids}
    finally:
        drop_schema(postgres_url, schema)
        with _connect(postgres_url) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


def raw(url: str, schema: str, *statements: str, tenant: str | None = None) -> list[Any]:
    """Run SQL as the restricted role; the rows (or row count) of each statement."""
    out: list[Any] = []
    with _connect(url) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        if tenant is not None:
            conn.execute("SELECT set_config('simpleflow.tenant', %s, false)", (tenant,))
        for sql in statements:
            cur = conn.execute(sql)  # type: ignore[arg-type]
            out.append(cur.fetchall() if cur.description else cur.rowcount)
    return out


def test_restricted_role_sees_nothing_without_a_tenant(rls: dict[str, str]) -> None:
    counts = raw(
        rls["role_url"],
        rls["schema"],
        *(
            f"SELECT count(*) FROM {t}"
            for t in ("workflow_run", "workflow_event", "workflow_signal", "workflow_step", "workflow_schedule")
        ),
    )
    assert [c[0][0] for c in counts] == [0, 0, 0, 0, 0]
    assert raw(rls["role_url"], rls["schema"], "UPDATE workflow_run SET priority = 1") == [0]


def test_restricted_role_reads_and_changes_only_its_tenant(rls: dict[str, str]) -> None:
    g = rls["globex"]
    rows, events, signals, updated, deleted = raw(
        rls["role_url"],
        rls["schema"],
        "SELECT id::text, tenant FROM workflow_run",
        "SELECT DISTINCT tenant FROM workflow_event",
        "SELECT count(*) FROM workflow_signal",
        f"UPDATE workflow_run SET priority = 1 WHERE id = '{g}'",
        f"DELETE FROM workflow_run WHERE id = '{g}'",
        tenant="acme",
    )
    assert rows == [(rls["acme"], "acme")]
    assert events == [("acme",)]
    assert signals == [(0,)]  # globex's signal is invisible
    assert (updated, deleted) == (0, 0)
    with pytest.raises(Exception, match="row-level security"):
        raw(
            rls["role_url"],
            rls["schema"],
            "INSERT INTO workflow_run (type, payload, tenant) VALUES ('x.v1', '{}', 'globex')",
            tenant="acme",
        )
    with pytest.raises(Exception, match="row-level security"):
        raw(rls["role_url"], rls["schema"], "UPDATE workflow_run SET tenant = 'globex'", tenant="acme")
    with Client(rls["owner_url"], tenant="globex") as owner_view:  # nothing of globex changed
        assert owner_view.get_run(g).priority == 100


def test_tenant_bound_client_works_as_the_restricted_role(rls: dict[str, str]) -> None:
    url = f"{rls['role_url']}?schema={rls['schema']}"
    with Client(url, tenant="acme") as acme:
        run_id = acme.submit("report.v1", {"n": 3}).with_idempotency("k").execute()
        assert acme.submit("report.v1").with_idempotency("k").execute() == run_id
        assert {r.id for r in acme.list_runs()} == {run_id, rls["acme"]}
        acme.signal(run_id, "go", {"x": 1})
        acme.cancel(run_id)
        acme.retry(run_id)
        assert [e.event_type for e in acme.get_events(run_id)][-1] == "requeued"
        assert acme.stats().queue[0].count == 2
        with pytest.raises(NotFound):
            acme.get_run(rls["globex"])
    with Client(url) as no_tenant:  # no tenant set on the session: RLS shows nothing
        assert no_tenant.list_runs() == []
    # the owner's worker serves both tenants, bypassing the policies (ENABLE, not FORCE)
    poller = Poller(rls["owner_url"]).handle_func("report.v1", lambda run: run.tenant)
    assert poller.run_until_idle() == 3
    poller.close()
    with Client(url, tenant="acme") as acme:
        assert acme.get_run(run_id).result == "acme"


def test_grant_checks_the_role_and_the_database(rls: dict[str, str], tmp_path: Any) -> None:
    with pytest.raises(ValidationError, match="role"):
        admin.grant_tenant_role(rls["owner_url"], 'x"; DROP TABLE workflow_run; --')
    with pytest.raises(ConfigurationError, match="row-level security"):
        admin.grant_tenant_role(f"sqlite:///{tmp_path}/t.db", "app")


def test_restricted_role_sees_only_its_own_limit_starts(rls: dict[str, str]) -> None:
    """Per-tenant limits: the owner's worker records each tenant's starts; a tenant's role
    reads the limits and its own starts (``list_limits``), not another's, and records none."""
    with Client(rls["owner_url"]) as owner:
        owner.set_limit("report.v1", rate=(5, 3600), per_tenant=True)
    poller = Poller(rls["owner_url"]).handle_func("report.v1", lambda run: None)
    assert poller.run_until_idle() == 2
    poller.close()
    mine, none = (
        raw(rls["role_url"], rls["schema"], "SELECT tenant FROM workflow_limit_start", tenant="acme")[0],
        raw(rls["role_url"], rls["schema"], "SELECT count(*) FROM workflow_limit_start")[0],
    )
    assert mine == [("acme",)] and none == [(0,)]
    with pytest.raises(Exception, match="permission denied"):
        raw(
            rls["role_url"],
            rls["schema"],
            "INSERT INTO workflow_limit_start (pattern, started_at, tenant) VALUES ('report.v1', now(), 'acme')",
            tenant="acme",
        )
    with Client(f"{rls['role_url']}?schema={rls['schema']}", tenant="acme") as acme:
        (limit,) = acme.list_limits()
        assert limit.per_tenant and limit.started_in_window == 1
