"""An idempotent submit racing ``prune`` of the run holding the same key (issue 11).

The submit's insert meets the live key (ON CONFLICT DO NOTHING), then prune deletes
that run and commits before the submit reads the key's holder back: ``insert_runs``
raised a bare ``AssertionError("lost idempotent insert")``. A submit must instead
return the id of a run that existed (the holder it saw, or a new run it inserted).
"""

from __future__ import annotations

import threading
import time

from simpleflow import Client, NotFound

KEY = "race-key"
SECONDS = 6.0


def test_idempotent_submit_racing_prune_of_the_key_holder(client: Client, db_url: str) -> None:
    stop = threading.Event()
    returned: list[str] = []
    known: set[str] = set()  # every run that held the key (the pruner saw each one)
    errors: list[BaseException] = []

    def submitter() -> None:
        with Client(db_url) as c:
            while not stop.is_set():
                try:
                    returned.append(c.submit("race.v1", {}).with_idempotency(KEY).execute())
                except BaseException as error:  # the defect is a bare AssertionError
                    errors.append(error)
                    return

    def pruner() -> None:
        with Client(db_url) as c:
            while not stop.is_set():
                for info in c.list_runs(idempotency_key=KEY):
                    known.add(info.id)
                    try:
                        c.cancel(info.id)
                    except NotFound:
                        pass
                c.prune(older_than=0, statuses=("cancelled",))

    threads = [threading.Thread(target=submitter) for _ in range(2)] + [threading.Thread(target=pruner)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline and not errors:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(30)
    known.update(info.id for info in client.list_runs(idempotency_key=KEY))

    assert not errors, f"submit raised {errors[0]!r}"
    assert len(returned) > 20, "the race did not run"
    unknown = set(returned) - known
    assert not unknown, f"{len(unknown)} submit(s) returned an id that never held the key"
