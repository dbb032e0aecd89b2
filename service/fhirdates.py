"""FHIR date and dateTime handling for the mapper.

Facts carry dates as ISO strings so that CEL compares them lexicographically on both engines:
``YYYY-MM-DD`` for calendar dates (as written at the source, no time-zone shift) and
``YYYY-MM-DDTHH:MM:SSZ`` in UTC for instants used to order events.
Partial FHIR dates (``2024`` or ``2024-05``) take the first day of their period.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, date, datetime

# The FHIR R4 regular expressions for date and dateTime, written out here once.
_DATE = re.compile(r"^(\d{4})(?:-(0[1-9]|1[0-2])(?:-(0[1-9]|[12]\d|3[01]))?)?$")
_DATETIME = re.compile(
    r"^(\d{4})(?:-(0[1-9]|1[0-2])(?:-(0[1-9]|[12]\d|3[01])"
    r"(?:T([01]\d|2[0-3]):([0-5]\d):([0-5]\d|60)(\.\d{1,9})?(Z|[+-](?:0\d|1[0-3]):[0-5]\d|14:00)?)?)?)?$"
)


class FhirDateError(ValueError):
    """A value that is not a valid FHIR date or dateTime."""


def _split(value: str) -> tuple[int, int | None, int | None, re.Match[str]]:
    match = _DATETIME.match(value)
    if match is None:
        raise FhirDateError("not a FHIR date or dateTime")
    year = int(match.group(1))
    month = int(match.group(2)) if match.group(2) else None
    day = int(match.group(3)) if match.group(3) else None
    if month is not None and day is not None:
        try:
            date(year, month, day)
        except ValueError as exc:
            raise FhirDateError("day out of range for month") from exc
    if match.group(4) and not match.group(8):
        raise FhirDateError("a dateTime with a time must carry a time-zone offset")
    return year, month, day, match


def to_iso_date(value: str) -> str:
    """Calendar date as written (``YYYY-MM-DD``); partial dates take their first day."""
    year, month, day, _ = _split(value)
    return f"{year:04d}-{month or 1:02d}-{day or 1:02d}"


def to_utc_instant(value: str) -> str:
    """A sortable UTC instant; a date without a time is read as midnight UTC."""
    year, month, day, match = _split(value)
    if not match.group(4):
        return f"{year:04d}-{month or 1:02d}-{day or 1:02d}T00:00:00Z"
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def date_bounds(value: str) -> tuple[date, date]:
    """Earliest and latest calendar day a (possibly partial) FHIR date can stand for."""
    if _DATE.match(value) is None and _DATETIME.match(value) is None:
        raise FhirDateError("not a FHIR date")
    year, month, day, _ = _split(value)
    if month is None:
        return date(year, 1, 1), date(year, 12, 31)
    if day is None:
        return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])
    exact = date(year, month, day)
    return exact, exact


def completed_years(born: date, on: date) -> int:
    """Whole years lived on ``on``; the birthday itself counts as completed."""
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def age_range_years(birth_date: str, as_of: date) -> tuple[float, float]:
    """Lowest and highest age a birth date allows on ``as_of`` (equal for a full date)."""
    earliest, latest = date_bounds(birth_date)
    return float(completed_years(latest, as_of)), float(completed_years(earliest, as_of))
