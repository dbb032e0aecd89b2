from datetime import date

import pytest

from service.fhirdates import (
    FhirDateError,
    age_range_years,
    completed_years,
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


@pytest.mark.parametrize("bad", ["1960-13-01", "1960-02-30", "yesterday", "2026-06-10T10:00", ""])
def test_invalid_values_are_refused(bad: str) -> None:
    with pytest.raises(FhirDateError):
        to_iso_date(bad)
