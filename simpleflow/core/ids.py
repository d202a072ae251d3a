"""Run and schedule ids: UUIDv7, time-ordered so new rows land at the end of the index."""

from __future__ import annotations

import uuid_utils


def new_id() -> str:
    return str(uuid_utils.uuid7())
