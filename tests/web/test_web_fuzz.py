"""schemathesis fuzzes the OpenAPI description against a live server on a throwaway
database: no request may get a 5xx, and every response must fit the description
(status code, content type and body schema). Bounded: a few hundred examples."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from web_helpers import API_KEY, LiveServer, require

#: examples per operation (about 20 operations: some 500 requests in all)
EXAMPLES = 25


def test_openapi_fuzz(migrated_url: str, serve: Callable[[Any], LiveServer]) -> None:
    schemathesis = require("schemathesis", "the OpenAPI fuzz test")
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    from simpleflow import Client
    from simpleflow.web import create_app

    with Client(migrated_url) as client:  # something to find, cancel, pause and delete
        for i in range(3):
            client.submit("fuzz.seed.v1", {"i": i}).execute()
        client.schedule("fuzz.seed.v1").cron("@daily").create()
    web = serve(create_app(migrated_url, api_keys=[API_KEY]))
    schema = schemathesis.openapi.from_url(f"{web.url}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    # both spellings, so generated credentials never replace the key
    headers = {"Authorization": f"Bearer {API_KEY}", "X-API-Key": API_KEY}
    statuses: Counter[int] = Counter()
    tried = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            case.headers = {**(case.headers or {}), **headers}
            response = case.call_and_validate(base_url=web.url, checks=checks)
            statuses[response.status_code] += 1

        fuzz()
        tried += 1
    assert tried >= 18, f"only {tried} operations in the description"
    # the key was honoured: most requests got past authentication, and some succeeded
    assert statuses[401] == 0 and sum(n for s, n in statuses.items() if s < 300) >= 50, statuses
    print(dict(statuses))
