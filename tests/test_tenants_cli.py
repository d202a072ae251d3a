"""The command line acts for one tenant (``--tenant`` / ``SIMPLEFLOW_TENANT``); ``stats
--by-tenant`` breaks the queue down; ``tenants grant`` needs PostgreSQL. Real subprocesses."""

from __future__ import annotations

import json

from test_cli import failed, ok, sf

from simpleflow import Client


def test_cli_commands_are_scoped_to_the_tenant(migrated_url: str) -> None:
    acme_id = ok(sf(migrated_url, "--tenant", "acme", "submit", "report.v1", '{"n": 1}')).strip()
    globex_id = ok(sf(migrated_url, "submit", "report.v1", env={"SIMPLEFLOW_TENANT": "globex"})).strip()
    with Client(migrated_url, tenant="acme") as acme:
        assert acme.get_run(acme_id).tenant == "acme"
    listed = json.loads(ok(sf(migrated_url, "list", "--json", "--tenant", "acme")))
    assert [r["id"] for r in listed] == [acme_id]
    assert listed[0]["tenant"] == "acme"
    failed(sf(migrated_url, "get", globex_id, "--tenant", "acme"), 1, "not found")
    failed(sf(migrated_url, "get", acme_id), 1, "not found")  # the default tenant
    failed(sf(migrated_url, "list", "--tenant", "no spaces"), 2, "invalid tenant")
    by_tenant = json.loads(ok(sf(migrated_url, "stats", "--by-tenant", "--json")))
    assert by_tenant == [
        {"tenant": "acme", "status": "pending", "count": 1},
        {"tenant": "globex", "status": "pending", "count": 1},
    ]
    table = ok(sf(migrated_url, "stats", "--by-tenant", "--tenant", "globex"))
    assert "globex" in table and "acme" not in table


def test_cli_tenants_grant(db_url: str, db_kind: str) -> None:
    ok(sf(db_url, "migrate"))
    if db_kind == "sqlite":
        failed(sf(db_url, "tenants", "grant", "app_user"), 2, "row-level security")
        return
    failed(sf(db_url, "tenants", "grant", "no-such-role-x"), 2, "invalid role")
    failed(sf(db_url, "tenants", "grant", "no_such_role_x"), 1, "no_such_role_x")
