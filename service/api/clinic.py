"""The daily clinic screening: at a set time of day, the service reads the coming appointments
(the next ``clinic_schedule_days_ahead`` days, narrowed by ``clinic_schedule_filters``), screens
their patients for the configured trials, and alerts coordinators of each candidate or potential
candidate before the visit, naming the appointment and its date.

Restart-safe and safe with several replicas: each day's screening is a row claimed under a lease
(``clinic_days``); a replica that stops mid-way leaves it to be taken over once its lease has
expired, and a finished day is not screened again. A visit's alert is claimed before it is sent,
unique per (trial, patient, appointment, channel): a screening taken over, or run again by hand
(``POST /clinic-schedule/run``), tells nobody twice.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from service.errors import ConfigError, error_kind
from service.fhir.appointments import ClinicDays, Visit, parse_filters, read_clinic
from service.fhir.retrieval import chunked
from service.settings import Settings
from service.state.clinic import ClinicStore
from service.state.leases import LeaseLostError, kept

if TYPE_CHECKING:
    from service.api.engine import ScreeningService

log = logging.getLogger(__name__)

_CLOCK = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


@dataclass(frozen=True)
class ClinicPlan:
    """The schedule's settings, checked once at start-up."""

    at: time | None  # None: no daily screening
    zone: str
    days_ahead: int
    filters: tuple[tuple[str, str], ...]
    trials: tuple[str, ...]


def clinic_plan(settings: Settings, trials: list[str]) -> ClinicPlan:
    """The plan of the settings; a ConfigError naming the setting that is wrong."""
    try:
        ZoneInfo(settings.clinic_timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"PRESCREEN_CLINIC_TIMEZONE: no time zone '{settings.clinic_timezone}'"
        ) from exc
    at = None
    if settings.clinic_schedule_time.strip():
        match = _CLOCK.fullmatch(settings.clinic_schedule_time.strip())
        if match is None:
            raise ConfigError("PRESCREEN_CLINIC_SCHEDULE_TIME must be HH:MM (24 h), e.g. 17:30")
        at = time(int(match.group(1)), int(match.group(2)))
    items = [f for f in settings.clinic_schedule_filters.split(";") if f.strip()]
    try:
        filters = parse_filters(items)
    except Exception as exc:
        raise ConfigError(f"PRESCREEN_CLINIC_SCHEDULE_FILTERS: {exc}") from exc
    chosen = [t.strip() for t in settings.clinic_schedule_trials.split(",") if t.strip()]
    unknown = sorted(set(chosen) - set(trials))
    if unknown:
        raise ConfigError(f"PRESCREEN_CLINIC_SCHEDULE_TRIALS: no trial named {unknown}")
    return ClinicPlan(
        at=at,
        zone=settings.clinic_timezone,
        days_ahead=settings.clinic_schedule_days_ahead,
        filters=filters,
        trials=tuple(chosen or sorted(trials)),
    )


class ClinicSchedule:
    def __init__(self, service: ScreeningService) -> None:
        self.service = service
        self.settings = service.settings
        self.plan = clinic_plan(service.settings, list(service.rulesets))
        self.store = ClinicStore(service.store)
        self._done: str | None = None  # the last day seen done: not asked again today

    def today(self) -> date:
        return datetime.now(ZoneInfo(self.plan.zone)).date()

    def due(self) -> date | None:
        """Today, once the schedule's time has come (in the clinic's zone)."""
        if self.plan.at is None:
            return None
        moment = datetime.now(ZoneInfo(self.plan.zone))
        if moment.time() < self.plan.at or self._done == moment.date().isoformat():
            return None
        return moment.date()

    async def tick(self) -> None:
        """The background loop's call: today's screening, if it is due and nobody has it."""
        today = self.due()
        if today is None:
            return
        day = today.isoformat()
        lease_seconds = self.settings.lease_seconds
        claimed = await asyncio.to_thread(
            self.store.claim_day, day, self.service.replica, lease_seconds
        )
        if not claimed:
            found = await asyncio.to_thread(self.store.day, day)
            if found is not None and found.state == "done":
                self._done = day
            return  # done, or another replica is at it (taken over if its lease runs out)
        renew = functools.partial(self.store.renew_day, day, self.service.replica, lease_seconds)
        try:
            async with kept(renew, lease_seconds) as lease:
                result = await self.run(today, lease.check)
        except LeaseLostError:
            log.warning("clinic screening of %s: lease lost to another replica", day)
            return
        except Exception as exc:
            # Left unfinished: taken up again once the lease has expired (here or elsewhere).
            log.warning("clinic screening of %s failed: %s", day, error_kind(exc))
            return
        await asyncio.to_thread(self.store.finish_day, day, self.service.replica, result)
        self._done = day

    async def run(self, today: date, check: Callable[[], None] | None = None) -> dict[str, Any]:
        """Screen the patients of the coming appointments and alert before each visit; what it
        read and did (no patient ids: it is stored and returned by the API)."""
        plan = self.plan
        days = ClinicDays(
            today + timedelta(days=1),
            today + timedelta(days=plan.days_ahead),
            plan.zone,
        )
        clinic = await read_clinic(
            await self.service.client(),
            days,
            plan.filters,
            self.settings.ignored_appointment_statuses,
            page_size=self.settings.fhir_page_size,
        )
        visits: dict[str, list[Visit]] = {}
        for visit in clinic.visits:
            visits.setdefault(visit.patient, []).append(visit)
        verdicts: dict[str, dict[str, int]] = {}
        for trial in plan.trials:
            counts = verdicts.setdefault(trial, {})
            for group in chunked(clinic.patients, self.settings.fhir_patients_per_request):
                if not group:
                    continue
                if check is not None:
                    check()
                contracts = await self.service.screen(
                    trial, group, today, self.settings.write_back, alert=False
                )
                for contract in contracts:
                    verdict = str(contract["verdict"])
                    counts[verdict] = counts.get(verdict, 0) + 1
                    patient = str(contract["patient"]).removeprefix("Patient/")
                    for visit in visits.get(patient, []):
                        await self.service.alerter.consider_visit(
                            trial, patient, visit.appointment, visit.day.isoformat(), verdict
                        )
        return {"clinic": clinic.as_json(), "verdicts": verdicts}
