"""The daily clinic screening against an EHR allowing patient-scoped queries only (the
constrained HAPI): the coming appointments screened, coordinators alerted before each visit
(the alert names the appointment and its date), once per (patient, trial, appointment) however
often it runs; and each day claimed by one replica at a time."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from service.cli import main
from service.state.clinic import ClinicStore
from service.state.store import Store, migrate
from tests.conftest import SAMPLE_DIR
from tests.helpers import read_ndjson
from tests.integration.conftest import fhir_put
from tests.integration.servers import SekmetServer, free_port
from tests.service.conftest import Helpers, running_service, service_settings, wait_for

pytestmark = pytest.mark.integration
TRIALS = ("relieve", "ssrs")
ALERTING = {"candidate", "potential-candidate"}


def offline_verdicts(out: Path, as_of: str) -> dict[str, dict[str, str]]:
    """The sample's verdicts as of ``as_of``, by trial and patient id."""
    command = ["screen", "--trial", ",".join(TRIALS), "--source", str(SAMPLE_DIR)]
    assert main([*command, "--as-of", as_of, "--out", str(out), "--no-progress"]) == 0
    return {
        trial: {
            v["patient"].removeprefix("Patient/"): v["verdict"]
            for v in read_ndjson(out / trial / "verdicts.ndjson")
        }
        for trial in TRIALS
    }


def appointment(aid: str, patient: str, day: str, status: str, clinic: str) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": aid,
        "status": status,
        "serviceType": [{"coding": [{"system": "urn:test:clinic", "code": clinic}]}],
        "start": f"{day}T10:00:00Z",
        "end": f"{day}T10:20:00Z",
        "participant": [
            {"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/spine-onc-1"}, "status": "accepted"},
        ],
    }


def visit_alerts(helpers: Helpers, clinic: str) -> list[dict[str, Any]]:
    found = []
    for _headers, body in list(helpers.inbox.webhooks):
        payload = json.loads(body)
        if payload.get("event") == "prescreen.visit" and clinic in payload["appointment"]:
            found.append(payload)
    return found


def test_the_daily_schedule_alerts_once_per_patient_trial_and_appointment(
    constrained_hapi: Any, helpers: Helpers, database_url: str, tmp_path: Path
) -> None:
    today = datetime.now(UTC).date()
    verdicts = offline_verdicts(tmp_path / "offline", today.isoformat())
    alerting = sorted(
        p for p in verdicts["relieve"] if any(verdicts[t][p] in ALERTING for t in TRIALS)
    )
    ineligible = sorted(
        p for p in verdicts["relieve"] if all(verdicts[t][p] == "ineligible" for t in TRIALS)
    )
    assert len(alerting) >= 3 and ineligible
    first, second, cancelled, excluded = alerting[0], alerting[1], alerting[2], ineligible[0]
    clinic = f"c{uuid.uuid4().hex[:10]}"  # this test's appointments alone match its filter
    tomorrow = (today + timedelta(days=1)).isoformat()
    later = (today + timedelta(days=2)).isoformat()
    booked = {
        f"{clinic}-1": (first, tomorrow),
        f"{clinic}-2": (second, tomorrow),
        f"{clinic}-3": (first, later),  # a second visit: alerted again, naming its date
        f"{clinic}-5": (excluded, tomorrow),
    }
    schedule = [appointment(a, p, d, "booked", clinic) for a, (p, d) in booked.items()]
    schedule.append(appointment(f"{clinic}-4", cancelled, tomorrow, "cancelled", clinic))
    schedule.append(appointment(f"{clinic}-6", second, today.isoformat(), "booked", clinic))
    base = constrained_hapi.base_url
    for resource in schedule:
        answer = fhir_put(f"{base}/Appointment/{resource['id']}", json=resource)
        assert answer.status_code in (200, 201)

    expected = {
        (trial, patient, f"Appointment/{aid}", day)
        for aid, (patient, day) in booked.items()
        for trial in TRIALS
        if verdicts[trial][patient] in ALERTING
    }
    port = free_port()
    settings = service_settings(
        cast(SekmetServer, SimpleNamespace(base_url=base)),
        helpers,
        database_url,
        port,
        clinic_schedule_time="00:00",  # due as soon as the service runs
        clinic_schedule_days_ahead=2,
        clinic_schedule_filters=f"service-type={clinic}",
        write_back=False,
    )

    def alerted() -> list[tuple[str, str, str, str]]:
        return [
            (a["trial"], a["patient"].removeprefix("Patient/"), a["appointment"],
             a["appointment_date"])
            for a in visit_alerts(helpers, clinic)
        ]  # fmt: skip

    with running_service(settings, port) as service:
        # The schedule's own run, from the background loop.
        wait_for(lambda: len(alerted()) >= len(expected), seconds=300)
        days = ClinicStore(Store(database_url))
        wait_for(lambda: (d := days.day(today.isoformat())) is not None and d.state == "done")
        # Run again by hand: the same visits screened, nobody told twice.
        with service.client() as api:
            answer = api.post("/clinic-schedule/run")
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["clinic"]["appointments_read"] == 5  # today's visit is not "coming"
        assert result["clinic"]["appointments_ignored"] == {"status cancelled": 1}
        time.sleep(1.0)
    assert sorted(alerted()) == sorted(expected)  # each exactly once
    assert not [a for a in alerted() if a[1] in (cancelled, excluded)]


def test_a_clinic_day_is_screened_by_one_replica_and_taken_over_after_its_lease(
    database_url: str,
) -> None:
    migrate(database_url)
    days = ClinicStore(Store(database_url))
    assert days.claim_day("2026-06-15", "replica-a", 30.0)
    assert not days.claim_day("2026-06-15", "replica-b", 30.0)  # a's lease is live
    assert days.renew_day("2026-06-15", "replica-a", 30.0)
    # A replica that stopped: its lease runs out and another takes the day over.
    assert days.claim_day("2026-06-16", "replica-a", 0.001)
    time.sleep(0.05)
    assert days.claim_day("2026-06-16", "replica-b", 30.0)
    assert not days.renew_day("2026-06-16", "replica-a", 30.0)
    days.finish_day("2026-06-15", "replica-a", {"clinic": {}})
    # A finished day is screened no more, by anyone.
    assert not days.claim_day("2026-06-15", "replica-b", 0.001)
    assert not days.claim_day("2026-06-15", "replica-a", 30.0)
