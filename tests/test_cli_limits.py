"""``simpleflow limits set|list|clear``, ``pause`` and ``resume`` as real subprocesses, on both databases."""

from __future__ import annotations

import json

from test_cli import failed, ok, sf, sf_many

from simpleflow import Client


def test_limits_set_list_clear_pause_resume(client: Client, migrated_url: str) -> None:
    url = migrated_url
    ok(sf(url, "limits", "set", "billing.%", "--concurrency", "5"))
    ok(sf(url, "limits", "set", "email.send.v1", "--rate", "100/1m", "--pause-after-failures", "20"))
    ok(sf(url, "limits", "set", "report.%", "--concurrency", "3", "--per-tenant"))
    assert "paused partner.%" in ok(sf(url, "pause", "partner.%"))
    table = ok(sf(url, "limits", "list"))
    header = ["PATTERN", "SCOPE", "CONCURRENCY", "RATE", "BREAKER", "STATE", "UPDATED"]
    assert table.splitlines()[0].split() == header
    assert "0/100 per 60s" in table and "paused (manual)" in table and "0/5" in table
    assert [line.split()[1:3] for line in table.splitlines() if line.startswith("report.%")] == [["per", "tenant"]]
    listed = json.loads(ok(sf(url, "limits", "list", "--json")))
    assert [x["pattern"] for x in listed] == ["billing.%", "email.send.v1", "partner.%", "report.%"]
    assert listed[1]["rate_count"] == 100 and listed[1]["pause_after_failures"] == 20 and listed[2]["paused"]
    assert [x["per_tenant"] for x in listed] == [False, False, False, True]
    assert "paused          partner.%" in ok(sf(url, "stats"))
    assert json.loads(ok(sf(url, "stats", "--json")))["paused"] == ["partner.%"]
    assert json.loads(ok(sf(url, "resume", "partner.%", "--json"))) == {"pattern": "partner.%", "action": "resumed"}
    ok(sf(url, "limits", "clear", "billing.%"))
    assert [x.pattern for x in client.list_limits()] == ["email.send.v1", "report.%"]


def test_limits_bad_input_changes_nothing(client: Client, migrated_url: str) -> None:
    results = sf_many(
        migrated_url,
        ["limits", "set", "billing.%", "--rate", "100"],
        ["limits", "set", "billing.%", "--concurrency", "0"],
        ["limits", "set", "billing.%"],
        ["limits", "set", "bad%pattern", "--concurrency", "1"],
        ["pause", "%x"],
        ["limits", "set", "billing.%", "--pause-after-failures", "3", "--per-tenant"],
    )
    failed(results[0], 2, "invalid rate")
    failed(results[1], 2, "concurrency")
    failed(results[2], 2, "at least one")
    failed(results[3], 2, "invalid limit pattern")
    failed(results[4], 2, "invalid limit pattern")
    failed(results[5], 2, "per_tenant=True) needs concurrency= or rate=")
    failed(sf(migrated_url, "limits", "clear", "billing.%"), 1, "no limit")
    failed(sf(migrated_url, "resume", "billing.%"), 1, "not paused")
    assert client.list_limits() == []
