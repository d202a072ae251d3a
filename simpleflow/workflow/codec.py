"""Recorded values of the replay layer: JSON for the record, the declared Python type on replay."""

from __future__ import annotations

import functools
import inspect
import traceback
from collections.abc import Callable
from typing import Any, get_type_hints

from pydantic import PydanticUserError, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from simpleflow.core.errors import NonRetryable, StepFailed, ValidationError
from simpleflow.core.validation import encode_json

_ANY: TypeAdapter[Any] = TypeAdapter(Any)


class Codec:
    """Turns a value into JSON for its record and back into the declared Python type."""

    def __init__(self, annotation: Any = Any) -> None:
        self.annotation = annotation
        self.adapter: TypeAdapter[Any] = _ANY if annotation is Any else _adapter(annotation)

    def dump(self, value: Any, what: str) -> Any:
        try:
            plain = self.adapter.dump_python(value, mode="json", warnings=False)
        except Exception as error:  # pydantic raises several types here
            raise ValidationError(f"{what} cannot be recorded as JSON: {error}") from None
        return encode_json(plain, what, None)[0]

    def load(self, value: Any, what: str) -> Any:
        try:
            return self.adapter.validate_python(value)
        except PydanticValidationError as error:
            raise ValidationError(f"{what} does not fit {_type_name(self.annotation)}: {error}") from None


@functools.lru_cache(maxsize=1024)
def _cached_adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def _adapter(annotation: Any) -> TypeAdapter[Any]:
    try:
        try:
            return _cached_adapter(annotation)
        except TypeError:  # an unhashable annotation: build it uncached
            return TypeAdapter(annotation)
    except PydanticUserError as error:
        raise ValidationError(
            f"cannot record values of type {_type_name(annotation)}: {str(error).splitlines()[0]}; annotate with a JSON-compatible "
            "type, a pydantic model or a dataclass"
        ) from None


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or repr(annotation)


def hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The resolved type hints of a function (of the wrapped function for a ``partial``).

    Builtins and classes give none (their values are recorded as plain JSON).
    """
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    if isinstance(target, type) or inspect.isbuiltin(target):
        return {}
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = getattr(type(target), "__call__", None)  # noqa: B004 - the method of a callable object
        if not inspect.isfunction(target):
            return {}
    try:
        return get_type_hints(target)
    except Exception as error:
        name = getattr(fn, "__qualname__", repr(fn))
        raise ValidationError(
            f"cannot resolve the type hints of {name}: {error}; define the types it names at module level"
        ) from None


@functools.lru_cache(maxsize=1024)
def _step_codec(fn: Callable[..., Any]) -> Codec:
    return Codec(hints(fn).get("return", Any))


def codec_for(fn: Callable[..., Any]) -> Codec:
    try:
        return _step_codec(fn)
    except TypeError:  # an unhashable callable
        return Codec(hints(fn).get("return", Any))


def error_record(error: BaseException) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": type(error).__name__,
        "message": str(error),
        "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
    }
    if isinstance(error, NonRetryable):
        record["permanent"] = True
    return record


def step_failed(name: str, error: Any) -> StepFailed:
    error = error if isinstance(error, dict) else {}
    failed = StepFailed(
        name, str(error.get("type", "Exception")), str(error.get("message", "")), str(error.get("traceback", ""))
    )
    failed.permanent = bool(error.get("permanent", False))
    return failed
