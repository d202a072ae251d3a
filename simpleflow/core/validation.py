"""Checks every public entry point runs before it touches the database.

A rejected input raises ``ValidationError`` with a message a person can act
on, and nothing is written.

Type names: 1–255 characters from letters, digits and ``. _ - : /``, starting
with a letter or digit (``billing.invoice.v1``). Prefixes for routing are a
type name, or the start of one followed by ``%`` (``billing.%``).
"""

from __future__ import annotations

import functools
import json
import math
import re
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

from pydantic import BaseModel, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from simpleflow.core.errors import NotFound, ValidationError

# Always used with ``fullmatch``: ``$`` would also match before a trailing newline.
TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/\-]{0,254}")
TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}")
PREFIX_RE = re.compile(r"[A-Za-z0-9._:/\-]{0,254}%")
KEY_MAX = 255
INT32 = 2**31 - 1
DEFAULT_PAYLOAD_LIMIT = 1024 * 1024
MAX_ATTEMPTS_LIMIT = 10_000
T = TypeVar("T")


def _shown(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_type(value: object, what: str = "type") -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string like 'billing.invoice.v1', got {type(value).__name__}")
    if not TYPE_RE.fullmatch(value):
        raise ValidationError(
            f"invalid {what} {_shown(value)}: use 1-255 letters, digits and . _ - : / "
            "starting with a letter or digit, e.g. 'billing.invoice.v1'"
        )
    return value


def check_prefix(value: object) -> str:
    """A routing prefix: an exact type, or the start of one followed by ``%``."""
    if isinstance(value, str) and value.endswith("%") and PREFIX_RE.fullmatch(value):
        return value
    if isinstance(value, str) and TYPE_RE.fullmatch(value):
        return value
    raise ValidationError(
        f"invalid type prefix {_shown(value)}: use a type name ('billing.invoice.v1') "
        "or the start of one followed by % ('billing.%'); % may appear only at the end"
    )


def check_name(value: object, what: str) -> str:
    """Step, signal and version names: non-empty printable text up to 255 characters."""
    if not isinstance(value, str) or not value or len(value) > 255 or not value.isprintable():
        raise ValidationError(
            f"{what} must be a non-empty printable string of at most 255 characters, got {_shown(value)}"
        )
    return value


def check_tenant(value: object) -> str:
    """A tenant name: 1-64 letters, digits, ``.``, ``_``, ``:`` or ``-``, starting with a letter or digit."""
    if not isinstance(value, str) or not TENANT_RE.fullmatch(value):
        raise ValidationError(
            f"invalid tenant {_shown(value)}: use 1-64 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit"
        )
    return value


def check_key(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > KEY_MAX:
        raise ValidationError(
            f"idempotency key must be a non-empty string of at most {KEY_MAX} characters, got {_shown(value)}"
        )
    if "\x00" in value:
        raise ValidationError("idempotency key must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("idempotency key is not valid Unicode (it contains a lone surrogate)") from None
    return value


def check_int(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{what} must be an integer, got {_shown(value)}")
    if not low <= value <= high:
        raise ValidationError(f"{what} must be between {low} and {high}, got {value}")
    return value


def check_priority(value: object) -> int:
    return check_int(value, "priority", -INT32, INT32)


def check_max_attempts(value: object) -> int:
    return check_int(value, "max_attempts", 1, MAX_ATTEMPTS_LIMIT)


def check_aware(value: object, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise ValidationError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValidationError(f"{what} must be timezone-aware (e.g. datetime.now(timezone.utc)), got a naive datetime")
    if value.year < 1970 or value.year > 9000:
        raise ValidationError(f"{what} must be between 1970 and 9000, got {value.isoformat()}")
    return value


#: every duration of the public API (a ``timedelta`` or a number of seconds) is at most this
MAX_DURATION = timedelta(days=365 * 100)


def check_duration(value: object, what: str, *, allow_zero: bool = True) -> timedelta:
    """A ``timedelta`` or a number of seconds (int or float, not bool, finite), as a ``timedelta``."""
    if isinstance(value, bool) or not isinstance(value, (timedelta, int, float)):
        raise ValidationError(
            f"{what} must be a datetime.timedelta or a number of seconds, got {type(value).__name__} {_shown(value)}"
        )
    if not isinstance(value, timedelta):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValidationError(f"{what} must be a finite number of seconds, got {value}")
        if value < 0 or (not allow_zero and value == 0):  # before rounding to microseconds
            raise ValidationError(f"{what} must be {'>= 0' if allow_zero else '> 0'} seconds, got {value}")
        if value > MAX_DURATION.total_seconds():  # exact for ints of any size
            raise ValidationError(f"{what} must be at most 100 years, got {_shown(value)} seconds")
        value = timedelta(seconds=value)
    if value < timedelta(0) or (not allow_zero and value == timedelta(0)):
        raise ValidationError(f"{what} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    if value > MAX_DURATION:
        raise ValidationError(f"{what} must be at most 100 years, got {value}")
    return value


def to_jsonable(value: Any, what: str = "payload") -> Any:
    """A pydantic model becomes its JSON form; other values pass through unchanged."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def encode_json(value: Any, what: str = "payload", limit: int | None = DEFAULT_PAYLOAD_LIMIT) -> tuple[Any, str]:
    """Validate that ``value`` is JSON (no NaN/Infinity, valid UTF-8, within ``limit`` bytes).

    Returns the JSON-ready value and its compact text.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise ValidationError(
            f"{what} must be a JSON-serializable value or a pydantic model, not bytes; pass json.loads(data)"
        )
    value = to_jsonable(value, what)
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        size = len(text.encode("utf-8"))
    except (TypeError, ValueError) as error:
        if isinstance(error, ValueError) and "Out of range float" in str(error):
            raise ValidationError(f"{what} contains NaN or Infinity, which JSON cannot represent") from None
        raise ValidationError(f"{what} is not JSON-serializable: {error}") from None
    except UnicodeEncodeError:
        raise ValidationError(f"{what} contains a string that is not valid Unicode (a lone surrogate)") from None
    except RecursionError:
        raise ValidationError(f"{what} is nested too deeply to serialize") from None
    if "\\u0000" in text:
        raise ValidationError(f"{what} contains a NUL character (\\u0000), which PostgreSQL cannot store in JSON")
    if limit is not None and size > limit:
        raise ValidationError(
            f"{what} is {size} bytes, over the limit of {limit} bytes (set payload_limit to change it)"
        )
    return value, text


def check_id(value: object, what: str = "run") -> str:
    """Run and schedule ids are UUIDs: any other string cannot name one (``NotFound``),
    and must not reach a ``uuid`` column."""
    import uuid

    if not isinstance(value, str):
        raise ValidationError(f"{what} id must be a string, got {type(value).__name__}")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFound(f"{what} {value!r} not found (not a {what} id)") from None


@functools.lru_cache(maxsize=256)
def _cached_adapter(target: Any) -> TypeAdapter[Any]:
    return TypeAdapter(target)


def _type_name(target: Any) -> str:
    name = getattr(target, "__name__", None)
    return name if isinstance(name, str) and not getattr(target, "__args__", None) else repr(target)


@overload
def parse_as(value: Any, target: type[T], what: str) -> T: ...
@overload
def parse_as(value: Any, target: Any, what: str) -> Any: ...
def parse_as(value: Any, target: Any, what: str) -> Any:
    """``value`` (decoded JSON) validated into ``target``: any type pydantic's ``TypeAdapter``
    handles (``dict``, ``list[int]``, dataclasses, models). ``ValidationError`` when the type is
    not one pydantic can validate or the value does not fit it."""
    try:
        try:
            adapter = _cached_adapter(target)
        except TypeError:  # an unhashable target (e.g. Annotated metadata): build it uncached
            adapter = TypeAdapter(target)
    except Exception as error:  # PydanticSchemaGenerationError, PydanticUserError, NameError, ...
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValidationError(
            f"cannot read {what} as {_shown(target)}: {first}; use a JSON-compatible type "
            "(dict, list[int], ...), a dataclass or a pydantic model"
        ) from None
    try:
        return adapter.validate_python(value)
    except PydanticValidationError as error:
        raise ValidationError(f"{what} does not fit {_type_name(target)}: {error}") from None
