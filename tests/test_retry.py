"""RetryPolicy: exponential backoff with jitter (pure; no database)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simpleflow import RetryPolicy, ValidationError


def test_defaults_follow_the_seed() -> None:
    p = RetryPolicy()
    assert p.initial_delay == timedelta(minutes=1)
    assert p.multiplier == 4.0
    assert p.max_delay == timedelta(hours=1)
    assert p.jitter == 0.1
    assert p.max_attempts == 3


def test_base_delay_grows_by_multiplier_and_is_capped() -> None:
    p = RetryPolicy()
    assert p.base_delay(1) == timedelta(seconds=60)
    assert p.base_delay(2) == timedelta(seconds=240)
    assert p.base_delay(3) == timedelta(seconds=960)
    assert p.base_delay(4) == timedelta(seconds=3600)  # 3840 capped at 1 h
    assert p.base_delay(50) == timedelta(hours=1)


def test_delay_is_within_jitter_of_base() -> None:
    p = RetryPolicy()
    for attempt in (1, 2, 3, 4, 10):
        base = p.base_delay(attempt).total_seconds()
        samples = [p.delay(attempt).total_seconds() for _ in range(300)]
        assert all(base * 0.9 <= s <= base * 1.1 for s in samples), (attempt, min(samples), max(samples))
        assert len(set(samples)) > 1  # actually spread, so failing runs do not retry in lockstep


def test_zero_jitter_is_exact() -> None:
    p = RetryPolicy(initial_delay=timedelta(seconds=2), multiplier=3, max_delay=timedelta(seconds=100), jitter=0)
    assert [p.delay(a) for a in (1, 2, 3, 4, 5)] == [timedelta(seconds=s) for s in (2, 6, 18, 54, 100)]


def test_zero_initial_delay() -> None:
    p = RetryPolicy(initial_delay=timedelta(0))
    assert p.base_delay(1) == p.base_delay(100) == p.delay(5) == timedelta(0)


def test_multiplier_one_is_constant() -> None:
    p = RetryPolicy(initial_delay=timedelta(seconds=5), multiplier=1, jitter=0)
    assert {p.delay(a) for a in range(1, 20)} == {timedelta(seconds=5)}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_delay": timedelta(seconds=-1)},
        {"initial_delay": True},
        {"initial_delay": "60"},
        {"initial_delay": None},
        {"max_delay": timedelta(seconds=30)},  # below initial_delay
        {"max_delay": float("inf")},
        {"multiplier": 0.5},
        {"multiplier": 0},
        {"multiplier": -2.0},
        {"multiplier": True},
        {"multiplier": "4"},
        {"multiplier": float("nan")},
        {"multiplier": float("inf")},
        {"jitter": 1.0},
        {"jitter": -0.1},
        {"jitter": True},
        {"jitter": float("nan")},
        {"jitter": "0.1"},
        {"max_attempts": 0},
        {"max_attempts": -1},
        {"max_attempts": True},
        {"max_attempts": 2.0},
        {"max_attempts": "3"},
    ],
    ids=repr,
)
def test_invalid_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempts_start_at_one(attempt: int) -> None:
    with pytest.raises(ValidationError):
        RetryPolicy().base_delay(attempt)
    with pytest.raises(ValidationError):
        RetryPolicy().delay(attempt)


policies = st.builds(
    RetryPolicy,
    initial_delay=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=2)),
    multiplier=st.floats(min_value=1.0, max_value=1000.0),
    max_delay=st.just(timedelta(days=2)),
    jitter=st.floats(min_value=0.0, max_value=0.99),
)


@settings(max_examples=200, deadline=None)
@given(policy=policies, attempt=st.integers(min_value=1, max_value=10**18))
def test_delay_is_bounded(policy: RetryPolicy, attempt: int) -> None:
    base = policy.base_delay(attempt).total_seconds()
    assert 0 <= base <= policy.max_delay.total_seconds()
    delay = policy.delay(attempt).total_seconds()
    assert delay >= 0
    # timedelta rounds to microseconds
    assert base * (1 - policy.jitter) - 1e-6 <= delay <= base * (1 + policy.jitter) + 1e-6


@settings(max_examples=100, deadline=None)
@given(policy=policies, attempt=st.integers(min_value=1, max_value=10_000))
def test_base_delay_is_monotonic(policy: RetryPolicy, attempt: int) -> None:
    assert policy.base_delay(attempt) <= policy.base_delay(attempt + 1)


@pytest.mark.parametrize("attempt", [10**3, 10**6, 2**63, 10**100])
def test_huge_attempts_do_not_overflow(attempt: int) -> None:
    p = RetryPolicy()
    assert p.base_delay(attempt) == timedelta(hours=1)
    assert timedelta(minutes=54) <= p.delay(attempt) <= timedelta(minutes=66)
