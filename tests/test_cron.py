"""Tests for simpleflow.core.cron: parsing, DST handling and missed-slot policy (no database)."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simpleflow.core.cron import CronSpec, MissedPolicy, due_slots
from simpleflow.core.errors import ValidationError

UTC = timezone.utc
NY = "America/New_York"
LONDON = "Europe/London"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def fires(spec: CronSpec, start: datetime, end: datetime) -> list[datetime]:
    """Every fire time in (start, end], by chaining next_after."""
    out: list[datetime] = []
    t = spec.next_after(start)
    while t <= end:
        out.append(t)
        t = spec.next_after(t)
    return out


# --- parsing -----------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        "* * * * *",
        "0 0 * * *",
        "*/15 9-17 * * 1-5",
        "0 9,17 * * MON-FRI",
        "0 0 1 jan,jul *",
        "0 0 L * *",
        "0 0 LW * *",
        "0 0 * * 5L",
        "0 0 * * MON#2",
        "0 0 * * 7",
        "5-55/10 */2 1-15/3 */3 *",
        "0 0 29 2 *",
    ],
)
def test_parse_accepts_standard_syntax(expr: str) -> None:
    spec = CronSpec.parse(expr)
    assert spec.expr == expr
    assert spec.timezone == "UTC"
    assert spec.next_after(utc(2026, 1, 1)) > utc(2026, 1, 1)


def test_parse_normalizes_whitespace_and_alias_case() -> None:
    assert CronSpec.parse("  0\t0  * * *\n").expr == "0 0 * * *"
    assert CronSpec.parse("@DAILY").expr == "@daily"


@pytest.mark.parametrize(
    ("alias", "equivalent"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ],
)
def test_aliases_fire_like_their_expansion(alias: str, equivalent: str) -> None:
    start, end = utc(2025, 12, 1), utc(2027, 2, 1)
    a = CronSpec.parse(alias, NY)
    b = CronSpec.parse(equivalent, NY)
    if alias == "@hourly":
        end = utc(2025, 12, 10)
    assert fires(a, start, end) == fires(b, start, end)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("61 * * * *", "invalid cron expression '61 * * * *': minute value 61 out of range 0-59"),
        ("0 24 * * *", "hour value 24 out of range 0-23"),
        ("0 0 0 * *", "day-of-month value 0 out of range 1-31"),
        ("0 0 32 * *", "day-of-month value 32 out of range 1-31"),
        ("0 0 * 13 *", "month value 13 out of range 1-12"),
        ("0 0 * * 8", "day-of-week value 8 out of range 0-7"),
        ("0 0 1-40 * *", "day-of-month value 40 out of range 1-31"),
        ("0 0 30 2 *", "day-of-month '30' never occurs in month '2'"),
        ("", "it is empty"),
        ("   ", "it is empty"),
        ("* * * *", "got 4 fields"),
        ("*", "got 1 field "),
        ("0 0 0 * * *", "got 6 fields; seconds and year fields are not supported"),
        ("0 0 0 * * * 2026", "got 7 fields"),
        ("@reboot", "unsupported alias '@reboot'"),
        ("@every 5m", "unsupported alias '@every 5m'"),
        ("hello world how are you", "cannot read minute field 'hello'"),
        ("*/0 * * * *", "cannot read minute field '*/0'"),
        ("5-1 * * * *", "cannot read minute field '5-1'"),
        ("0 0 * * MON#6", "cannot read day-of-week field 'MON#6'"),
        ("0 0 ? * *", "cannot read day-of-month field '?'"),
        ("0 0 * FOO *", "cannot read month field 'FOO'"),
        ("1,,2 * * * *", "cannot read minute field '1,,2'"),
    ],
)
def test_parse_rejects_with_actionable_message(expr: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        CronSpec.parse(expr)
    assert message in str(info.value)
    assert "(expected 5 fields: minute hour day-of-month month day-of-week)" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parse_rejects_overlong_expression() -> None:
    with pytest.raises(ValidationError, match="longer than 255"):
        CronSpec.parse("0 0 * * " + ",".join(["1"] * 200))


@pytest.mark.parametrize("expr", [None, 5, b"* * * * *", ["*"] * 5])
def test_parse_rejects_non_str_expression(expr: object) -> None:
    with pytest.raises(ValidationError, match="must be a str"):
        CronSpec.parse(expr)  # type: ignore[arg-type]


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "utc", "../etc/passwd", "/usr/share/zoneinfo/UTC", "localtime"])
def test_parse_rejects_unknown_time_zone(zone: str) -> None:
    with pytest.raises(ValidationError, match="unknown time zone"):
        CronSpec.parse("0 0 * * *", zone)


@pytest.mark.parametrize("zone", [None, 0, ZoneInfo("UTC")])
def test_parse_rejects_non_str_time_zone(zone: object) -> None:
    with pytest.raises(ValidationError, match="time zone must be an IANA name"):
        CronSpec.parse("0 0 * * *", zone)  # type: ignore[arg-type]


def test_direct_construction_validates_too() -> None:
    with pytest.raises(ValidationError):
        CronSpec("61 * * * *")
    with pytest.raises(ValidationError):
        CronSpec("0 0 * * *", "Nowhere/Land")
    assert CronSpec("0 0 * * *", LONDON) == CronSpec.parse("0 0 * * *", LONDON)


def test_spec_is_frozen_hashable_and_compares_by_text() -> None:
    spec = CronSpec.parse("0 0 * * *", LONDON)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.expr = "1 1 * * *"  # type: ignore[misc]
    assert spec == CronSpec.parse(" 0 0 * * * ", LONDON)
    assert spec != CronSpec.parse("0 0 * * *", NY)
    assert len({spec, CronSpec.parse("0 0 * * *", LONDON)}) == 1
    assert repr(spec) == "CronSpec(expr='0 0 * * *', timezone='Europe/London')"


# --- next_after --------------------------------------------------------------


def test_next_after_is_strictly_after_and_utc() -> None:
    spec = CronSpec.parse("*/15 * * * *")
    assert spec.next_after(utc(2026, 1, 1, 0, 0)) == utc(2026, 1, 1, 0, 15)
    assert spec.next_after(utc(2026, 1, 1, 0, 14, 59, 999999)) == utc(2026, 1, 1, 0, 15)
    assert spec.next_after(utc(2026, 1, 1, 0, 15, 0, 1)) == utc(2026, 1, 1, 0, 30)
    result = spec.next_after(utc(2026, 1, 1))
    assert result.tzinfo is UTC


def test_next_after_accepts_any_aware_datetime() -> None:
    spec = CronSpec.parse("0 9 * * *", NY)
    after = datetime(2026, 6, 1, 9, 0, tzinfo=ZoneInfo("Asia/Tokyo"))  # = 00:00 UTC = 20:00 EDT on May 31
    assert spec.next_after(after) == utc(2026, 6, 1, 13, 0)  # 09:00 EDT
    assert spec.next_after(after).utcoffset() == timedelta(0)


def test_next_after_rejects_naive_datetime() -> None:
    with pytest.raises(ValidationError, match="after must be timezone-aware"):
        CronSpec.parse("* * * * *").next_after(datetime(2026, 1, 1))


def test_next_after_rare_schedule() -> None:
    # February with five Mondays: leap years whose Feb 1 is a Monday.
    spec = CronSpec.parse("0 0 * 2 MON#5")
    assert spec.next_after(utc(2020, 1, 1)) == utc(2044, 2, 29)


def test_day_fields_or_when_both_restricted_and_otherwise() -> None:
    either = CronSpec.parse("0 0 13 * FRI")  # the 13th, or any Friday
    assert fires(either, utc(2026, 2, 1), utc(2026, 2, 28)) == [
        utc(2026, 2, 6),
        utc(2026, 2, 13),
        utc(2026, 2, 20),
        utc(2026, 2, 27),
    ]
    both = CronSpec.parse("0 0 */2 * FRI")  # starts with '*': odd days that are Fridays
    assert fires(both, utc(2026, 2, 1), utc(2026, 2, 28)) == [utc(2026, 2, 13), utc(2026, 2, 27)]


# --- DST ---------------------------------------------------------------------


def local_fires(expr: str, zone: str, day: date) -> list[str]:
    """Fire times on a local calendar day, as local ISO strings with offsets."""
    tz = ZoneInfo(zone)
    spec = CronSpec.parse(expr, zone)
    start = datetime.combine(day, time(), tzinfo=tz) - timedelta(microseconds=1)
    end = datetime.combine(day + timedelta(days=1), time(), tzinfo=tz) - timedelta(microseconds=1)
    return [t.astimezone(tz).isoformat() for t in fires(spec, start, end)]


def test_ny_spring_forward_nonexistent_time_fires_once_after_the_gap() -> None:
    # 2026-03-08: 02:00 EST jumps to 03:00 EDT, so 02:30 does not exist.
    assert local_fires("30 2 * * *", NY, date(2026, 3, 7)) == ["2026-03-07T02:30:00-05:00"]
    assert local_fires("30 2 * * *", NY, date(2026, 3, 8)) == ["2026-03-08T03:00:00-04:00"]
    assert local_fires("30 2 * * *", NY, date(2026, 3, 9)) == ["2026-03-09T02:30:00-04:00"]
    spec = CronSpec.parse("30 2 * * *", NY)
    assert spec.next_after(utc(2026, 3, 8)) == utc(2026, 3, 8, 7, 0)
    assert spec.next_after(utc(2026, 3, 8, 7, 0)) == utc(2026, 3, 9, 6, 30)


def test_ny_spring_forward_times_in_the_gap_collapse_into_one_fire() -> None:
    assert local_fires("0,15,45 2,3 * * *", NY, date(2026, 3, 8)) == [
        "2026-03-08T03:00:00-04:00",  # 02:00, 02:15, 02:45 and 03:00 together
        "2026-03-08T03:15:00-04:00",
        "2026-03-08T03:45:00-04:00",
    ]


def test_ny_fall_back_2_30_fires_once() -> None:
    # 2026-11-01: 02:00 EDT falls back to 01:00 EST; 02:30 exists once (EST).
    assert local_fires("30 2 * * *", NY, date(2026, 11, 1)) == ["2026-11-01T02:30:00-05:00"]
    spec = CronSpec.parse("30 2 * * *", NY)
    assert fires(spec, utc(2026, 10, 31), utc(2026, 11, 3)) == [
        utc(2026, 10, 31, 6, 30),
        utc(2026, 11, 1, 7, 30),
        utc(2026, 11, 2, 7, 30),
    ]


def test_ny_fall_back_repeated_time_fires_once_at_first_occurrence() -> None:
    # 01:30 happens twice on 2026-11-01: 01:30 EDT (05:30 UTC), then 01:30 EST (06:30 UTC).
    assert local_fires("30 1 * * *", NY, date(2026, 11, 1)) == ["2026-11-01T01:30:00-04:00"]
    spec = CronSpec.parse("30 1 * * *", NY)
    assert spec.next_after(utc(2026, 11, 1, 5, 29)) == utc(2026, 11, 1, 5, 30)
    # From anywhere after the first occurrence, even inside the repeated hour,
    # the next fire is the next day.
    for after in (utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 6, 10), utc(2026, 11, 1, 6, 30), utc(2026, 11, 1, 6, 45)):
        assert spec.next_after(after) == utc(2026, 11, 2, 6, 30)
    assert local_fires("0-59/20 1 * * *", NY, date(2026, 11, 1)) == [
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:20:00-04:00",
        "2026-11-01T01:40:00-04:00",
    ]


@pytest.mark.parametrize(
    ("zone", "spring", "autumn"),
    [(NY, date(2026, 3, 8), date(2026, 11, 1)), (LONDON, date(2026, 3, 29), date(2026, 10, 25))],
)
def test_hourly_fires_every_real_hour_across_both_transitions(zone: str, spring: date, autumn: date) -> None:
    spec = CronSpec.parse("0 * * * *", zone)
    for day, count in ((spring, 23), (autumn, 25)):
        start = datetime.combine(day - timedelta(days=1), time(), tzinfo=ZoneInfo(zone))
        got = fires(spec, start, start + timedelta(days=3))
        gaps = {b - a for a, b in itertools.pairwise(got)}
        assert gaps == {timedelta(hours=1)}  # no UTC hour skipped, none fired twice
        assert len(set(got)) == len(got)
        assert len(local_fires("0 * * * *", zone, day)) == count
    missing = "T01:00" if zone == LONDON else "T02:00"  # the local hour that does not exist
    repeated = "T01:00"  # the local hour that happens twice
    assert not [t for t in local_fires("0 * * * *", zone, spring) if missing in t]
    assert len([t for t in local_fires("0 * * * *", zone, autumn) if repeated in t]) == 2


def test_hourly_local_hours_on_ny_transition_days() -> None:
    spring = local_fires("0 * * * *", NY, date(2026, 3, 8))
    assert spring[:4] == [
        "2026-03-08T00:00:00-05:00",
        "2026-03-08T01:00:00-05:00",
        "2026-03-08T03:00:00-04:00",  # there is no 02:00
        "2026-03-08T04:00:00-04:00",
    ]
    autumn = local_fires("0 * * * *", NY, date(2026, 11, 1))
    assert autumn[:4] == [
        "2026-11-01T00:00:00-04:00",
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:00:00-05:00",  # an hour later in real time
        "2026-11-01T02:00:00-05:00",
    ]


def test_periodic_schedule_skips_gap_slots_instead_of_shifting_them() -> None:
    # '30 * * * *' is periodic (hour field '*'): 02:30 does not exist and is not moved to 03:00.
    spring = local_fires("30 * * * *", NY, date(2026, 3, 8))
    assert spring[:3] == ["2026-03-08T00:30:00-05:00", "2026-03-08T01:30:00-05:00", "2026-03-08T03:30:00-04:00"]
    quarter = CronSpec.parse("*/15 * * * *", NY)
    got = fires(quarter, utc(2026, 11, 1, 4), utc(2026, 11, 1, 8))
    assert {b - a for a, b in itertools.pairwise(got)} == {timedelta(minutes=15)}


def test_london_transitions_for_a_fixed_time() -> None:
    # 2026-03-29: 01:00 GMT jumps to 02:00 BST; 2026-10-25: 02:00 BST falls back to 01:00 GMT.
    assert local_fires("30 1 * * *", LONDON, date(2026, 3, 29)) == ["2026-03-29T02:00:00+01:00"]
    assert local_fires("30 1 * * *", LONDON, date(2026, 3, 30)) == ["2026-03-30T01:30:00+01:00"]
    assert local_fires("30 1 * * *", LONDON, date(2026, 10, 25)) == ["2026-10-25T01:30:00+01:00"]
    assert local_fires("30 1 * * *", LONDON, date(2026, 10, 26)) == ["2026-10-26T01:30:00+00:00"]
    assert local_fires("30 2 * * *", LONDON, date(2026, 3, 29)) == ["2026-03-29T02:30:00+01:00"]
    assert local_fires("30 2 * * *", LONDON, date(2026, 10, 25)) == ["2026-10-25T02:30:00+00:00"]


def test_lord_howe_half_hour_shifts() -> None:
    # Australia/Lord_Howe moves by 30 minutes: 2026-04-05 02:00 +11 -> 01:30 +10:30,
    # 2026-10-04 02:00 +10:30 -> 02:30 +11. cronsim alone skips slots here for periodic schedules.
    lh = "Australia/Lord_Howe"
    half_hourly = CronSpec.parse("*/30 * * * *", lh)
    for centre in (utc(2026, 4, 4, 15), utc(2026, 10, 3, 15, 30)):
        got = fires(half_hourly, centre - timedelta(hours=6), centre + timedelta(hours=6))
        assert {b - a for a, b in itertools.pairwise(got)} == {timedelta(minutes=30)}
    assert len(local_fires("* 14 * * *", lh, date(2026, 10, 4))) == 60
    assert local_fires("* 2 * * *", lh, date(2026, 4, 5))[0] == "2026-04-05T02:00:00+10:30"
    assert local_fires("15 2 * * *", lh, date(2026, 10, 4)) == ["2026-10-04T02:30:00+11:00"]
    assert local_fires("45 1 * * *", lh, date(2026, 4, 5)) == ["2026-04-05T01:45:00+11:00"]


# Brute-force reference for DST behaviour: minute/hour fields from a small grammar,
# other fields '*'. Zones include Lord Howe Island, whose DST shift is 30 minutes.

ZONES = [NY, LONDON, "Australia/Lord_Howe", "Europe/Berlin", "Asia/Kolkata", "UTC"]
TRANSITIONS = [
    utc(2026, 3, 8, 7),
    utc(2026, 11, 1, 6),
    utc(2026, 3, 29, 1),
    utc(2026, 10, 25, 1),
    utc(2026, 4, 4, 15),  # Lord Howe: 02:00 +11 -> 01:30 +10:30
    utc(2026, 10, 3, 15, 30),  # Lord Howe: 02:00 +10:30 -> 02:30 +11
    utc(2026, 6, 15, 12),
]


@st.composite
def field_and_values(draw: st.DrawFn, high: int) -> tuple[str, set[int]]:
    kind = draw(st.sampled_from(["star", "step", "one", "list", "range"]))
    if kind == "star":
        return "*", set(range(high + 1))
    if kind == "step":
        n = draw(st.integers(1, high))
        return f"*/{n}", set(range(0, high + 1, n))
    if kind == "one":
        v = draw(st.integers(0, high))
        return str(v), {v}
    if kind == "list":
        values = draw(st.sets(st.integers(0, high), min_size=1, max_size=4))
        return ",".join(map(str, sorted(values))), values
    a, b = sorted(draw(st.tuples(st.integers(0, high), st.integers(0, high))))
    return f"{a}-{b}", set(range(a, b + 1))


def reference(
    minute: tuple[str, set[int]], hour: tuple[str, set[int]], zone: str, start: datetime, end: datetime
) -> list[datetime]:
    """Fire times in (start, end] by the documented DST rule, minute by minute."""
    tz = ZoneInfo(zone)
    (m_text, minutes), (h_text, hours) = minute, hour
    out: set[datetime] = set()
    if m_text.startswith("*") or h_text.startswith("*"):  # periodic: every instant the clock shows
        t = start.replace(second=0, microsecond=0)
        while t <= end:
            local = t.astimezone(tz)
            if local.minute in minutes and local.hour in hours:
                out.add(t)
            t += timedelta(minutes=1)
    else:  # fixed-time: wall clock, gap -> first valid instant after it, repeat -> first occurrence
        day = start.astimezone(tz).date() - timedelta(days=1)
        while day <= end.astimezone(tz).date() + timedelta(days=1):
            for h in hours:
                for m in minutes:
                    wall = datetime.combine(day, time(h, m))
                    while wall.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None) != wall:
                        wall += timedelta(minutes=1)  # does not exist: move to the end of the gap
                    out.add(wall.replace(tzinfo=tz, fold=0).astimezone(UTC))
            day += timedelta(days=1)
    return sorted(t for t in out if start < t <= end)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    minute=field_and_values(59),
    hour=field_and_values(23),
    zone=st.sampled_from(ZONES),
    centre=st.sampled_from(TRANSITIONS),
    offset=st.integers(-36 * 60, 12 * 60),
)
def test_next_after_matches_reference_around_transitions(
    minute: tuple[str, set[int]], hour: tuple[str, set[int]], zone: str, centre: datetime, offset: int
) -> None:
    start = centre + timedelta(minutes=offset, seconds=17)
    end = start + timedelta(hours=30)
    spec = CronSpec.parse(f"{minute[0]} {hour[0]} * * *", zone)
    assert fires(spec, start, end) == reference(minute, hour, zone, start, end)


@settings(max_examples=100, deadline=None)
@given(
    expr=st.sampled_from(["30 2 * * *", "30 1 * * *", "0 * * * *", "*/20 1,2 * * *", "15,45 0-3 * * *", "0 2 * * 0"]),
    zone=st.sampled_from(ZONES),
    centre=st.sampled_from(TRANSITIONS),
    offset=st.integers(-48 * 3600, 48 * 3600),
)
def test_next_after_is_consistent_from_any_point(expr: str, zone: str, centre: datetime, offset: int) -> None:
    """next_after(t) == next_after(t') for every t' in [t, next_after(t)): no slot skipped or repeated."""
    spec = CronSpec.parse(expr, zone)
    t = centre + timedelta(seconds=offset)
    first = spec.next_after(t)
    assert first > t
    probe = t
    while probe < first:
        assert spec.next_after(probe) == first
        probe += timedelta(minutes=7)
    assert spec.next_after(first) > first


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789*/,-LW#MONJANSUFRI@ \t?", max_size=40))
def test_parse_fuzz_only_raises_validation_error(expr: str) -> None:
    try:
        spec = CronSpec.parse(expr)
    except ValidationError:
        return
    assert spec.next_after(utc(2026, 1, 1)) > utc(2026, 1, 1)


# --- due_slots ---------------------------------------------------------------

EVERY_5 = CronSpec.parse("*/5 * * * *")


def test_nothing_due_before_next_run_at() -> None:
    nra = utc(2026, 1, 1, 0, 5)
    for policy in MissedPolicy:
        assert due_slots(EVERY_5, nra, utc(2026, 1, 1, 0, 4, 59), policy) == ([], nra)


@pytest.mark.parametrize("policy", list(MissedPolicy))
def test_single_due_slot_is_on_time(policy: MissedPolicy) -> None:
    nra = utc(2026, 1, 1, 0, 5)
    assert due_slots(EVERY_5, nra, nra, policy) == ([nra], utc(2026, 1, 1, 0, 10))
    assert due_slots(EVERY_5, nra, nra + timedelta(seconds=59), policy) == ([nra], utc(2026, 1, 1, 0, 10))


def test_single_late_slot_fires_except_under_none() -> None:
    spec = CronSpec.parse("0 0 * * *")
    nra, now = utc(2026, 1, 1), utc(2026, 1, 1, 6)  # six hours late, still the only due slot
    assert due_slots(spec, nra, now, MissedPolicy.LATEST) == ([nra], utc(2026, 1, 2))
    assert due_slots(spec, nra, now, MissedPolicy.ALL) == ([nra], utc(2026, 1, 2))
    assert due_slots(spec, nra, now, MissedPolicy.NONE) == ([], utc(2026, 1, 2))
    assert due_slots(spec, nra, now, MissedPolicy.NONE, grace=timedelta(hours=6)) == ([nra], utc(2026, 1, 2))
    assert due_slots(spec, nra, nra + timedelta(minutes=1), MissedPolicy.NONE) == ([nra], utc(2026, 1, 2))
    assert due_slots(spec, nra, nra + timedelta(minutes=1, microseconds=1), MissedPolicy.NONE) == (
        [],
        utc(2026, 1, 2),
    )


def test_several_due_slots_by_policy() -> None:
    nra, now = utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 0, 22)  # 00:00, 05, 10, 15, 20 due
    new_next = utc(2026, 1, 1, 0, 25)
    assert due_slots(EVERY_5, nra, now, MissedPolicy.LATEST) == ([utc(2026, 1, 1, 0, 20)], new_next)
    assert due_slots(EVERY_5, nra, now, MissedPolicy.ALL) == (
        [utc(2026, 1, 1, 0, m) for m in (0, 5, 10, 15, 20)],
        new_next,
    )
    assert due_slots(EVERY_5, nra, now, MissedPolicy.ALL, max_catchup=2) == (
        [utc(2026, 1, 1, 0, 15), utc(2026, 1, 1, 0, 20)],
        new_next,
    )
    assert due_slots(EVERY_5, nra, now, MissedPolicy.NONE) == ([], new_next)
    assert due_slots(EVERY_5, nra, now, MissedPolicy.NONE, grace=timedelta(days=1)) == ([], new_next)


def test_default_policy_is_latest_and_policy_strings_are_accepted() -> None:
    nra, now = utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 0, 22)
    assert due_slots(EVERY_5, nra, now) == due_slots(EVERY_5, nra, now, MissedPolicy.LATEST)
    assert due_slots(EVERY_5, nra, now, "all") == due_slots(EVERY_5, nra, now, MissedPolicy.ALL)  # type: ignore[arg-type]
    assert MissedPolicy("none") is MissedPolicy.NONE
    assert isinstance(MissedPolicy.LATEST, str)
    assert MissedPolicy.LATEST.value == "latest"


def test_long_outage_is_cheap_and_keeps_the_newest() -> None:
    every_minute = CronSpec.parse("* * * * *")
    nra, now = utc(2016, 1, 1), utc(2026, 1, 1, 12, 0, 30)  # ten years of minutes missed
    slots, new_next = due_slots(every_minute, nra, now, MissedPolicy.ALL)
    assert len(slots) == 100
    assert slots[0] == utc(2026, 1, 1, 10, 21)
    assert slots[-1] == utc(2026, 1, 1, 12, 0)
    assert new_next == utc(2026, 1, 1, 12, 1)
    assert due_slots(every_minute, nra, now, MissedPolicy.LATEST) == ([utc(2026, 1, 1, 12, 0)], new_next)


def test_all_includes_the_stored_slot_when_the_backlog_fits() -> None:
    yearly = CronSpec.parse("@yearly", LONDON)
    slots, new_next = due_slots(yearly, utc(2000, 1, 1), utc(2026, 6, 1), MissedPolicy.ALL)
    assert slots == [utc(year, 1, 1) for year in range(2000, 2027)]
    assert new_next == utc(2027, 1, 1)


def test_stale_next_run_at_counts_as_a_slot() -> None:
    # next_run_at stored before the expression changed; it is still the first unfired slot.
    nra = utc(2026, 1, 1, 0, 3)
    assert due_slots(EVERY_5, nra, utc(2026, 1, 1, 0, 4), MissedPolicy.ALL) == ([nra], utc(2026, 1, 1, 0, 5))
    assert due_slots(EVERY_5, nra, utc(2026, 1, 1, 0, 11), MissedPolicy.ALL) == (
        [nra, utc(2026, 1, 1, 0, 5), utc(2026, 1, 1, 0, 10)],
        utc(2026, 1, 1, 0, 15),
    )


def test_due_slots_returns_utc_for_non_utc_inputs() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    nra = datetime(2026, 1, 1, 9, 0, tzinfo=tokyo)  # 00:00 UTC
    slots, new_next = due_slots(EVERY_5, nra, datetime(2026, 1, 1, 9, 7, tzinfo=tokyo), MissedPolicy.ALL)
    assert slots == [utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 0, 5)]
    assert all(s.tzinfo is UTC for s in slots)
    assert new_next == utc(2026, 1, 1, 0, 10)
    assert new_next.tzinfo is UTC
    _, unchanged = due_slots(EVERY_5, nra, datetime(2026, 1, 1, 8, 0, tzinfo=tokyo), MissedPolicy.ALL)
    assert unchanged == nra
    assert unchanged.tzinfo is UTC


def test_dst_slots_through_due_slots() -> None:
    spec = CronSpec.parse("30 2 * * *", NY)
    nra = spec.next_after(utc(2026, 3, 7, 12))
    assert nra == utc(2026, 3, 8, 7, 0)  # 03:00 EDT
    assert due_slots(spec, nra, utc(2026, 3, 8, 7, 0, 5), MissedPolicy.NONE) == ([nra], utc(2026, 3, 9, 6, 30))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"next_run_at": datetime(2026, 1, 1)}, "next_run_at must be timezone-aware"),
        ({"now": datetime(2026, 1, 1)}, "now must be timezone-aware"),
        ({"now": "2026-01-01"}, "now must be a datetime"),
        ({"policy": "sometimes"}, "invalid missed-slot policy 'sometimes'"),
        ({"max_catchup": 0}, "max_catchup must be an integer >= 1"),
        ({"max_catchup": True}, "max_catchup must be an integer >= 1"),
        ({"max_catchup": 2.5}, "max_catchup must be an integer >= 1"),
        ({"grace": timedelta(seconds=-1)}, "grace must be a timedelta >= 0"),
        ({"grace": 60}, "grace must be a timedelta >= 0"),
    ],
)
def test_due_slots_validates_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "spec": EVERY_5,
        "next_run_at": utc(2026, 1, 1),
        "now": utc(2026, 1, 1, 1),
        "policy": MissedPolicy.ALL,
    }
    args.update(kwargs)
    with pytest.raises(ValidationError, match=message):
        due_slots(**args)  # type: ignore[arg-type]


SPECS = [
    CronSpec.parse("* * * * *"),
    CronSpec.parse("*/7 * * * *", LONDON),
    CronSpec.parse("30 2 * * *", NY),
    CronSpec.parse("30 1 * * *", NY),
    CronSpec.parse("0 * * * *", NY),
    CronSpec.parse("0 9 * * MON-FRI", "Asia/Tokyo"),
    CronSpec.parse("15,45 0-3 * * *", "Australia/Lord_Howe"),
]


@settings(max_examples=200, deadline=None)
@given(
    spec=st.sampled_from(SPECS),
    policy=st.sampled_from(list(MissedPolicy)),
    max_catchup=st.integers(1, 30),
    grace=st.sampled_from([timedelta(0), timedelta(minutes=1), timedelta(hours=1)]),
    start=st.sampled_from(TRANSITIONS),
    steps=st.lists(
        st.one_of(st.integers(0, 120), st.integers(0, 6 * 3600), st.integers(0, 3 * 86400)),
        min_size=1,
        max_size=25,
    ),
)
def test_ticker_simulation_properties(
    spec: CronSpec,
    policy: MissedPolicy,
    max_catchup: int,
    grace: timedelta,
    start: datetime,
    steps: list[int],
) -> None:
    """Feed due_slots its own output with increasing now; check the invariants."""
    next_run_at = spec.next_after(start - timedelta(days=1))
    now = next_run_at - timedelta(seconds=30)
    fired: list[datetime] = []
    for step in steps:
        now += timedelta(seconds=step)
        previous = next_run_at
        slots, next_run_at = due_slots(spec, previous, now, policy, max_catchup, grace)
        expected_due = [previous, *fires(spec, previous, now)] if previous <= now else []
        assert slots == sorted(set(slots))  # ascending, no duplicates
        assert all(previous <= s <= now for s in slots)
        assert set(slots) <= set(expected_due)
        assert all(s.tzinfo is UTC for s in slots)
        if previous > now:
            assert (slots, next_run_at) == ([], previous)
            continue
        assert next_run_at > now
        assert next_run_at == spec.next_after(now)
        if len(expected_due) == 1:
            on_time = policy is not MissedPolicy.NONE or now - previous <= grace
            assert slots == (expected_due if on_time else [])
        elif policy is MissedPolicy.LATEST:
            assert slots == expected_due[-1:]
        elif policy is MissedPolicy.ALL:
            assert slots == expected_due[-max_catchup:]
        else:
            assert slots == []
        fired.extend(slots)
    assert fired == sorted(set(fired))  # never fired twice across calls
    if fired:
        assert next_run_at > fired[-1]


@settings(max_examples=50, deadline=None)
@given(
    spec=st.sampled_from(SPECS),
    start=st.sampled_from(TRANSITIONS),
    ticks=st.lists(st.integers(1, 90), min_size=1, max_size=60),
)
def test_frequent_ticking_fires_every_slot_exactly_once(spec: CronSpec, start: datetime, ticks: list[int]) -> None:
    """With tickers polling more often than the schedule fires, every policy fires every slot once."""
    for policy in MissedPolicy:
        first = next_run_at = spec.next_after(start)
        now = first
        fired: list[datetime] = []
        for seconds in ticks:
            slots, next_run_at = due_slots(spec, next_run_at, now, policy)
            fired.extend(slots)
            now += timedelta(seconds=min(seconds, 59))
        assert fired == [first, *fires(spec, first, fired[-1])]
