"""FHIR date and dateTime handling for the mapper.

Facts carry dates as ISO strings so that CEL compares them lexicographically on both engines:
``YYYY-MM-DD`` for calendar dates (as written at the source, no time-zone shift) and
``YYYY-MM-DDTHH:MM:SSZ`` in UTC for instants used to order events.
Partial FHIR dates (``2024`` or ``2024-05``) take the first day of their period.

Every form FHIR R4 allows is read: offsets from -14:00 to +14:00, ``Z``, fractional seconds and
the leap second ``:60``. A time without an offset is not valid FHIR but common in exports: it is
read leniently (its calendar day as written, UTC for ordering) and the caller reports it.
"""

from __future__ import annotations

import calendar
import functools
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone

# The FHIR R4 dateTime grammar, with the offset optional so that offset-less times can be read
# leniently (and seconds optional for the same reason); _split tells the two apart.
_DATETIME = re.compile(
    r"^(\d{4})(?:-(0[1-9]|1[0-2])(?:-(0[1-9]|[12]\d|3[01])"
    r"(?:T([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d|60)(\.\d{1,9})?)?"
    r"(Z|[+-](?:(?:0\d|1[0-3]):[0-5]\d|14:00))?)?)?)?$"
)


class FhirDateError(ValueError):
    """A value that is not a valid FHIR date or dateTime."""


@dataclass(frozen=True, slots=True)
class FhirDateTime:
    """A parsed date or dateTime: its calendar day, a sortable UTC instant, and leniency."""

    day: str
    instant: str
    lenient: bool  # a time without offset (or seconds): read, but the caller reports it


@functools.lru_cache(maxsize=8_192)  # the same dates recur across a population
def parse_datetime(value: str) -> FhirDateTime:
    """Any FHIR R4 date, dateTime or instant; raises FhirDateError for anything else."""
    match = _DATETIME.match(value)
    if match is None:
        raise FhirDateError("not a FHIR date or dateTime")
    year = int(match.group(1))
    month = int(match.group(2) or 1)
    day = int(match.group(3) or 1)
    try:
        calendar_day = date(year, month, day)
    except ValueError as exc:
        raise FhirDateError("day out of range for month") from exc
    written = calendar_day.isoformat() if year >= 1000 else f"{year:04d}-{month:02d}-{day:02d}"
    if match.group(4) is None:
        return FhirDateTime(written, f"{written}T00:00:00Z", lenient=False)
    hour, minute = int(match.group(4)), int(match.group(5))
    # The leap second 23:59:60 orders as the last whole second of its minute.
    second = min(int(match.group(6) or 0), 59)
    offset_text = match.group(8)
    lenient = offset_text is None or match.group(6) is None
    offset = timedelta(0)
    if offset_text and offset_text != "Z":
        sign = -1 if offset_text[0] == "-" else 1
        offset = sign * timedelta(hours=int(offset_text[1:3]), minutes=int(offset_text[4:6]))
    try:
        local = datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
        instant = local.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError):
        # Year 1 at a positive offset lies before datetime.min in UTC: order it by its local time.
        instant = f"{written}T{hour:02d}:{minute:02d}:{second:02d}Z"
    return FhirDateTime(written, instant, lenient)


def to_iso_date(value: str) -> str:
    """Calendar date as written (``YYYY-MM-DD``); partial dates take their first day."""
    return parse_datetime(value).day


def to_utc_instant(value: str) -> str:
    """A sortable UTC instant; a date without a time is read as midnight UTC."""
    return parse_datetime(value).instant


def date_bounds(value: str) -> tuple[date, date]:
    """Earliest and latest calendar day a (possibly partial) FHIR date can stand for."""
    match = _DATETIME.match(value)
    if match is None:
        raise FhirDateError("not a FHIR date")
    parsed = parse_datetime(value)
    year = int(match.group(1))
    if match.group(2) is None:
        return date(year, 1, 1), date(year, 12, 31)
    month = int(match.group(2))
    if match.group(3) is None:
        return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])
    exact = date.fromisoformat(parsed.day)
    return exact, exact


def completed_years(born: date, on: date) -> int:
    """Whole years lived on ``on``; the birthday itself counts as completed."""
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


@functools.lru_cache(maxsize=8_192)
def age_range_years(birth_date: str, as_of: date) -> tuple[float, float]:
    """Lowest and highest age a birth date allows on ``as_of`` (equal for a full date)."""
    earliest, latest = date_bounds(birth_date)
    return float(completed_years(latest, as_of)), float(completed_years(earliest, as_of))
