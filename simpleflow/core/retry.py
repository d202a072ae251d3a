"""Retry policy: exponential backoff with jitter, a pure object tested without a database."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta

from simpleflow.core.errors import ValidationError
from simpleflow.core.validation import MAX_DURATION, check_duration

#: the longest delay a policy may produce (the same bound as every other duration)
MAX_DELAY = MAX_DURATION


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait before attempt ``n + 1`` after attempt ``n`` failed.

    ``delay(n) = min(initial_delay * multiplier ** (n - 1), max_delay)``, then
    spread by ±``jitter`` (a fraction) so that runs failing together do not
    retry together. The defaults follow the seed: 1 min, ×4, ±10 %, capped at 1 h.
    ``max_attempts`` is used by workflow steps; a run's own attempts come from
    the run's ``max_attempts``. Delays are a ``timedelta`` or a number of seconds;
    they are stored as ``timedelta``.
    """

    initial_delay: timedelta | float = timedelta(minutes=1)
    multiplier: float = 4.0
    max_delay: timedelta | float = timedelta(hours=1)
    jitter: float = 0.1
    max_attempts: int = 3
    #: error types that fail the run (or step) for good at once, like ``NonRetryable``
    give_up_on: tuple[type[BaseException], ...] = ()
    _rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        # run_at = now + delay must stay a time both databases can store: check_duration caps at 100 years
        initial = check_duration(self.initial_delay, "RetryPolicy.initial_delay")
        cap = check_duration(self.max_delay, "RetryPolicy.max_delay")
        if cap < initial:
            raise ValidationError(f"RetryPolicy.max_delay must be >= initial_delay ({initial}), got {cap}")
        object.__setattr__(self, "initial_delay", initial)  # frozen: normalise once, here
        object.__setattr__(self, "max_delay", cap)
        if (
            isinstance(self.multiplier, bool)
            or not isinstance(self.multiplier, (int, float))
            or not (1.0 <= self.multiplier <= 1000.0)
        ):
            raise ValidationError("RetryPolicy.multiplier must be a number between 1 and 1000")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, (int, float)) or not (0.0 <= self.jitter < 1.0):
            raise ValidationError("RetryPolicy.jitter must be a fraction in [0, 1)")
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or not (1 <= self.max_attempts <= 10_000)
        ):
            raise ValidationError("RetryPolicy.max_attempts must be an integer between 1 and 10000")
        if isinstance(self.give_up_on, type):
            object.__setattr__(self, "give_up_on", (self.give_up_on,))
        if not isinstance(self.give_up_on, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in self.give_up_on
        ):
            raise ValidationError("RetryPolicy.give_up_on must be a tuple of exception types")

    def gives_up_on(self, error: BaseException) -> bool:
        """Is ``error`` one of the types this policy never retries?"""
        return bool(self.give_up_on) and isinstance(error, self.give_up_on)

    def base_delay(self, attempt: int) -> timedelta:
        """The delay after failed attempt ``attempt`` (1-based), before jitter."""
        if attempt < 1:
            raise ValidationError(f"attempt must be >= 1, got {attempt}")
        initial = _seconds(self.initial_delay)
        cap = _seconds(self.max_delay)
        # Compare in log space first: multiplier ** attempt overflows quickly.
        exponent = attempt - 1
        seconds = cap
        if initial == 0:
            seconds = 0.0
        else:
            try:
                seconds = min(initial * float(self.multiplier) ** exponent, cap)
            except OverflowError:
                seconds = cap
        return timedelta(seconds=seconds)

    def delay(self, attempt: int) -> timedelta:
        """The delay after failed attempt ``attempt``, with jitter applied."""
        base = self.base_delay(attempt).total_seconds()
        spread = base * self.jitter
        seconds = base + self._rng.uniform(-spread, spread) if spread else base
        return timedelta(seconds=max(0.0, seconds))


def _seconds(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


DEFAULT_RETRY = RetryPolicy()
