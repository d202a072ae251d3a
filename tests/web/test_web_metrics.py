"""``GET /metrics`` and tenants: a ``tenant`` label once the database holds more than the
default tenant's runs, the label sets of a single-tenant installation unchanged."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from web_helpers import API_KEY, READ_KEY, LiveServer, read_headers, require

from simpleflow import Client

R = read_headers()


def samples(web: LiveServer) -> dict[str, float]:
    """Every sample line of ``/metrics`` (``name{labels}`` -> value); both paths answer the same."""
    both = []
    for path in ("/metrics", "/api/v1/metrics"):
        response = web.http.get(path, headers=R)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        found = {}
        for line in response.text.splitlines():
            if not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                found[name] = float(value)
        both.append(found)
    assert both[0].keys() == both[1].keys()  # the ages move on between the two scrapes
    return both[1]


def test_a_single_tenant_installation_has_no_tenant_label(web_app: LiveServer, migrated_url: str) -> None:
    with Client(migrated_url) as client:
        client.submit("a.v1", 1).execute()
        client.cancel(client.submit("a.v1", 2).execute())
    found = samples(web_app)
    assert found == {
        'simpleflow_queue_depth{type="a.v1",status="pending"}': 1,
        "simpleflow_oldest_due_age_seconds": found["simpleflow_oldest_due_age_seconds"],
        'simpleflow_runs_finished_last_hour{status="succeeded"}': 0,
        'simpleflow_runs_finished_last_hour{status="failed"}': 0,
        'simpleflow_runs_finished_last_hour{status="cancelled"}': 1,
        'simpleflow_workers{state="live"}': 0,
        'simpleflow_workers{state="stale"}': 0,
    }
    assert 0 <= found["simpleflow_oldest_due_age_seconds"] < 60


def test_runs_of_other_tenants_add_a_tenant_label(web_app: LiveServer, migrated_url: str) -> None:
    with Client(migrated_url) as default, Client(migrated_url, tenant="acme") as acme:
        default.submit("a.v1", 1).execute()
        assert not any("tenant=" in name for name in samples(web_app))
        acme.submit("a.v1", 1).execute()
        acme.submit("a.v1", 2).execute()
        acme.submit("b.v1", 3).execute()
        acme.cancel(acme.submit("b.v1", 4).execute())
    with Client(migrated_url, tenant="globex") as globex:
        globex.submit("a.v1", 5).run_in(timedelta(hours=1)).execute()  # pending, not due yet
    found = samples(web_app)
    assert {k: v for k, v in found.items() if k.startswith("simpleflow_queue_depth")} == {
        'simpleflow_queue_depth{tenant="acme",type="a.v1",status="pending"}': 2,
        'simpleflow_queue_depth{tenant="acme",type="b.v1",status="pending"}': 1,
        'simpleflow_queue_depth{tenant="default",type="a.v1",status="pending"}': 1,
        'simpleflow_queue_depth{tenant="globex",type="a.v1",status="pending"}': 1,
    }
    ages = {k: v for k, v in found.items() if k.startswith("simpleflow_oldest_due_age_seconds")}
    assert set(ages) == {f'simpleflow_oldest_due_age_seconds{{tenant="{t}"}}' for t in ("acme", "default", "globex")}
    assert ages['simpleflow_oldest_due_age_seconds{tenant="globex"}'] == 0  # nothing of globex's is due
    assert 0 <= ages['simpleflow_oldest_due_age_seconds{tenant="acme"}'] < 60
    finished = {k: v for k, v in found.items() if k.startswith("simpleflow_runs_finished_last_hour")}
    assert len(finished) == 9  # three statuses for each tenant
    assert finished['simpleflow_runs_finished_last_hour{tenant="acme",status="cancelled"}'] == 1
    assert sum(finished.values()) == 1
    assert found['simpleflow_workers{state="live"}'] == 0  # workers serve every tenant: no label
    assert not any(re.match(r"simpleflow_workers\{.*tenant=", k) for k in found)


def test_an_app_over_a_tenant_bound_client_shows_its_tenant(
    migrated_url: str, serve: Callable[[Any], LiveServer]
) -> None:
    require("fastapi", "the web extra")
    from simpleflow.web import create_app

    with Client(migrated_url) as default:
        default.submit("a.v1", 1).execute()
    with Client(migrated_url, tenant="acme") as acme:
        acme.submit("a.v1", 1).execute()
        web = serve(create_app(acme, api_keys=[API_KEY], read_keys=[READ_KEY]))
        found = samples(web)
    assert {k: v for k, v in found.items() if k.startswith("simpleflow_queue_depth")} == {
        'simpleflow_queue_depth{tenant="acme",type="a.v1",status="pending"}': 1,  # not the default tenant's
    }
