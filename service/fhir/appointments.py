"""A clinic's schedule as the patients to screen: Appointments of a date range, read with one
search (pages followed), and the patients who take part in them.

The range is whole calendar days in the clinic's time zone, both ends included: the search asks
for ``date=ge<first day 00:00>`` and ``date=lt<day after the last, 00:00>`` as instants with that
zone's offset, so no server has to guess which zone a bare date means. Each appointment's start is
checked again here (a server that ignores ``date`` returns everything). Appointments whose status
is one of the ignored statuses (configuration, ``appointment_ignored_statuses``) are left out and
counted, as are participants who declined; only participants whose actor is a Patient count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from service.errors import PrescreenError
from service.fhir.client import FhirClient, Json
from service.mapping.resources import UnattributableResourceError, patient_id_from_reference


@dataclass(frozen=True)
class ClinicDays:
    """First and last clinic day (both included) in a time zone."""

    first: date
    last: date
    zone: str = "UTC"

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise PrescreenError("--appointments: the last day is before the first")
        try:
            ZoneInfo(self.zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise PrescreenError(
                f"PRESCREEN_CLINIC_TIMEZONE: no time zone '{self.zone}' (an IANA name such as "
                "Europe/Berlin)"
            ) from exc

    def bounds(self) -> tuple[datetime, datetime]:
        zone = ZoneInfo(self.zone)
        start = datetime.combine(self.first, time(), tzinfo=zone)
        end = datetime.combine(self.last + timedelta(days=1), time(), tzinfo=zone)
        return start, end

    def as_json(self) -> dict[str, str]:
        return {"first": self.first.isoformat(), "last": self.last.isoformat(), "zone": self.zone}


def parse_days(text: str, zone: str = "UTC") -> ClinicDays:
    """``2026-06-16`` or ``2026-06-16..2026-06-18`` (both ends included)."""
    first, sep, last = text.strip().partition("..")
    try:
        start = date.fromisoformat(first.strip())
        end = date.fromisoformat(last.strip()) if sep else start
    except ValueError as exc:
        raise PrescreenError(
            f"--appointments must be DATE or DATE..DATE as YYYY-MM-DD, not '{text}'"
        ) from exc
    return ClinicDays(start, end, zone)


def parse_filters(items: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """``--appointment-filter NAME=VALUE`` items: Appointment search parameters, sent as given."""
    filters = []
    for item in items:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise PrescreenError(
                f"--appointment-filter must be NAME=VALUE (e.g. practitioner=Practitioner/1), "
                f"not '{item}'"
            )
        if name in ("date", "_count"):
            raise PrescreenError(f"--appointment-filter: '{name}' is set by --appointments")
        filters.append((name, value))
    return tuple(filters)


@dataclass(frozen=True)
class Visit:
    """One patient's appointment of the range."""

    patient: str
    appointment: str
    day: date
    start: str


@dataclass
class ClinicList:
    """What reading the schedule found: the visits kept, and what was left out and why."""

    days: ClinicDays
    filters: tuple[tuple[str, str], ...]
    visits: list[Visit] = field(default_factory=list)
    read: int = 0
    ignored: Counter[str] = field(default_factory=Counter)

    @property
    def patients(self) -> list[str]:
        return sorted({visit.patient for visit in self.visits})

    def as_json(self) -> dict[str, Any]:
        return {
            "days": self.days.as_json(),
            "filters": [f"{name}={value}" for name, value in self.filters],
            "appointments_read": self.read,
            "appointments_kept": len({v.appointment for v in self.visits}),
            "appointments_ignored": dict(sorted(self.ignored.items())),
            "patients": len(self.patients),
        }


async def read_clinic(
    client: FhirClient,
    days: ClinicDays,
    filters: Sequence[tuple[str, str]],
    ignored_statuses: Iterable[str],
    *,
    page_size: int,
) -> ClinicList:
    """The patients with an appointment of ``days`` (see the module docstring)."""
    start, end = days.bounds()
    params = [
        ("date", f"ge{start.isoformat()}"),
        ("date", f"lt{end.isoformat()}"),
        *filters,
        ("_count", str(page_size)),
    ]
    found = ClinicList(days, tuple(filters))
    ignored = frozenset(ignored_statuses)
    zone = ZoneInfo(days.zone)
    seen: set[str] = set()
    async for resource in client.search("Appointment", params):
        if resource.get("resourceType") != "Appointment":
            continue
        key = str(resource.get("id"))
        if key in seen:
            continue  # a page boundary moved while paging: counted once
        seen.add(key)
        found.read += 1
        status = resource.get("status")
        if not isinstance(status, str) or status in ignored:
            found.ignored[f"status {status}" if isinstance(status, str) else "no status"] += 1
            continue
        when = _start(resource.get("start"))
        if when is None or not start <= when < end:
            found.ignored["start outside the days"] += 1
            continue
        patients = list(_patients(resource))
        if not patients:
            found.ignored["no patient participant"] += 1
            continue
        day = when.astimezone(zone).date()
        for patient in patients:
            found.visits.append(Visit(patient, key, day, str(resource["start"])))
    return found


def _start(value: object) -> datetime | None:
    """An Appointment's start (an FHIR instant: always with a zone); None when unusable."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _patients(appointment: Json) -> Iterable[str]:
    """The Patients taking part (not those who declined)."""
    for participant in appointment.get("participant") or []:
        if not isinstance(participant, dict) or participant.get("status") == "declined":
            continue
        actor = participant.get("actor")
        reference = actor.get("reference") if isinstance(actor, dict) else None
        if not isinstance(reference, str):
            continue
        try:
            yield patient_id_from_reference(reference)
        except UnattributableResourceError:
            continue  # a Practitioner, Location, HealthcareService...
