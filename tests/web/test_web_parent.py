"""A child run's page links to its parent; the API's RunInfo carries ``parent_id``."""

from __future__ import annotations

import sqlalchemy as sa
from web_helpers import API_KEY, LiveServer, write_headers

from simpleflow import Client
from simpleflow.db.schema import workflow_run


def test_a_child_run_shows_its_parent(web_app: LiveServer, migrated_url: str) -> None:
    with Client(migrated_url) as client:
        parent = client.submit("page.parent.v1").execute()
        child = client.submit("page.child.v1").execute()
        with client.db.engine.begin() as conn:
            conn.execute(
                sa.update(workflow_run).where(workflow_run.c.id == child).values(parent_id=parent),
                execution_options=client.db.exec_options,
            )
    assert web_app.http.post("/login", data={"key": API_KEY}).status_code == 303
    page = web_app.http.get(f"/runs/{child}").text
    assert f'id="run-parent" href="/runs/{parent}"' in page
    assert 'id="run-parent"' not in web_app.http.get(f"/runs/{parent}").text
    api = web_app.http.get(f"/api/v1/runs/{child}", headers=write_headers())
    assert api.status_code == 200 and api.json()["parent_id"] == parent
