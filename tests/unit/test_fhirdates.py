from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.fhirdates import (
    FhirDateError,
    age_range_years,
    completed_years,
    parse_datetime,
    to_iso_date,
    to_utc_instant,
)


def test_birthday_on_the_day_counts() -> None:
    assert completed_years(date(2008, 6, 15), date(2026, 6, 15)) == 18
    assert completed_years(date(2008, 6, 16), date(2026, 6, 15)) == 17


def test_leap_day_birthday_completes_on_march_first_in_common_years() -> None:
    assert completed_years(date(2008, 2, 29), date(2026, 2, 28)) == 17
    assert completed_years(date(2008, 2, 29), date(2026, 3, 1)) == 18


@pytest.mark.parametrize(
    ("birth", "low", "high"),
    [
        ("2008", 17.0, 18.0),
        ("2008-06", 17.0, 18.0),
        ("2008-05", 18.0, 18.0),
        ("1960-03-10", 66.0, 66.0),
    ],
)
def test_partial_birth_dates_give_an_age_range(birth: str, low: float, high: float) -> None:
    assert age_range_years(birth, date(2026, 6, 15)) == (low, high)


def test_dates_keep_the_local_calendar_day() -> None:
    assert to_iso_date("2026-06-10T23:30:00-05:00") == "2026-06-10"
    assert to_iso_date("2026-06") == "2026-06-01"


def test_instants_are_normalised_to_utc_for_ordering() -> None:
    assert to_utc_instant("2026-06-10T23:30:00-05:00") == "2026-06-11T04:30:00Z"
    assert to_utc_instant("2026-06-10") == "2026-06-10T00:00:00Z"


@pytest.mark.parametrize(
    "bad",
    [
        "1960-13-01",
        "1960-02-30",
        "yesterday",
        "",
        "2026-05-25T09:30:00:0014:00",  # sign-less offset glued to the seconds
        "2026-05-25T09:30:00+14:01",
        "2026-05-25T09:30:00+15:00",
        "2026-05-25T24:00:00Z",
        "2026-05-25 09:30:00Z",
    ],
)
def test_invalid_values_are_refused(bad: str) -> None:
    with pytest.raises(FhirDateError):
        to_iso_date(bad)


def test_the_whole_offset_range_is_read() -> None:
    east = parse_datetime("2026-05-25T09:30:00+14:00")
    assert (east.day, east.instant, east.lenient) == ("2026-05-25", "2026-05-24T19:30:00Z", False)
    west = parse_datetime("2026-05-25T09:30:00-12:00")
    assert west.instant == "2026-05-25T21:30:00Z"


def test_the_leap_second_is_read_as_the_last_second_of_its_minute() -> None:
    leap = parse_datetime("2016-12-31T23:59:60Z")
    assert (leap.day, leap.instant, leap.lenient) == ("2016-12-31", "2016-12-31T23:59:59Z", False)


@pytest.mark.parametrize("value", ["2026-06-10T10:00:00", "2026-06-10T10:00", "2026-06-10T10:00Z"])
def test_a_time_without_offset_or_seconds_is_read_leniently(value: str) -> None:
    parsed = parse_datetime(value)
    assert parsed.lenient
    assert parsed.day == "2026-06-10"


# --- properties -----------------------------------------------------------------------------


@st.composite
def fhir_datetimes(draw: st.DrawFn) -> tuple[str, datetime]:
    """A valid FHIR R4 dateTime/instant with a full time, and the moment it stands for."""
    moment = draw(st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9998, 12, 30)))
    minutes = draw(st.integers(min_value=-14 * 60, max_value=14 * 60))
    offset = timedelta(minutes=minutes)
    fraction = draw(st.sampled_from(["", ".5", ".123", ".123456789"]))
    if minutes == 0 and draw(st.booleans()):
        zone = "Z"
    else:
        sign = "-" if minutes < 0 else "+"
        zone = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    text = moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + zone
    return text, moment.replace(microsecond=0, tzinfo=timezone(offset))


@given(fhir_datetimes())
def test_every_valid_datetime_parses_to_its_day_and_utc_instant(
    case: tuple[str, datetime],
) -> None:
    text, moment = case
    parsed = parse_datetime(text)
    assert parsed.day == text[:10]
    assert parsed.instant == moment.replace(microsecond=0).astimezone(UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert not parsed.lenient


@given(st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)), st.integers(0, 2))
def test_every_valid_date_and_partial_date_parses(day: date, precision: int) -> None:
    text = f"{day.year:04d}-{day.month:02d}-{day.day:02d}"[: (4, 7, 10)[precision]]
    parsed = parse_datetime(text)
    assert parsed.day.startswith(text)
    assert parsed.instant.startswith(parsed.day)


@given(st.text(max_size=40))
def test_any_text_either_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        parsed = parse_datetime(text)
    except FhirDateError:
        return
    assert len(parsed.day) == 10 and parsed.instant.endswith("Z")
