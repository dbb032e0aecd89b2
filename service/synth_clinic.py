"""A synthetic hospital's clinic schedule: Appointments over the days after ``as_of``, with the
Practitioners and Locations they name (``prescreen synth --clinic-days N``).

Deterministic and independent of the clinical records: the schedule has a random stream of its
own, so a population's records are the same with or without it. Most appointments are booked;
some are cancelled (half of those rebooked on a later day), marked no-show or entered in error,
so a clinic list has to leave those out. The first scheduled patients cycle through every status
(as the spinal scenarios do) so that even a small population has each, including a patient whose
only appointment is cancelled.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

Resource = dict[str, Any]

CLINIC_SYSTEM = "http://hospital.example.org/fhir/CodeSystem/clinic"
# (practitioner id, name, location id, location name, service-type code, display)
CLINICS = [
    ("spine-onc-1", "Okafor", "spine-clinic", "Spine oncology clinic", "spine-oncology",
     "Spine oncology"),
    ("rad-onc-1", "Lindqvist", "radiation-clinic", "Radiation oncology clinic",
     "radiation-oncology", "Radiation oncology"),
]  # fmt: skip
STATUS_WEIGHTS = {"booked": 0.78, "cancelled": 0.10, "noshow": 0.06, "entered-in-error": 0.06}
# The first scheduled patients take these, one each: every status is present however small the
# population (the cancelled one is never rebooked).
FIRST_STATUSES = ["cancelled", "noshow", "entered-in-error", "booked"]
# Clinic hours in the hospital's zone (summer time of central Europe).
OFFSET = "+02:00"


def clinic_schedule(
    patients: int, seed: int, as_of: date, days: int, *, share: float = 0.35
) -> Iterator[Resource]:
    """The Practitioners, Locations and Appointments of ``days`` clinic days after ``as_of``;
    about ``share`` of the patients (``p0000000``…, as ``service.synth`` names them) have one."""
    if days <= 0:
        return
    for practitioner, family, location, place, _code, _display in CLINICS:
        yield {
            "resourceType": "Practitioner",
            "id": practitioner,
            "name": [{"family": family, "prefix": ["Dr"]}],
        }
        yield {"resourceType": "Location", "id": location, "name": place, "status": "active"}
    rng = random.Random(f"{seed}:clinic")
    statuses, weights = list(STATUS_WEIGHTS), list(STATUS_WEIGHTS.values())
    number = 0
    scheduled = 0
    for index in range(patients):
        if rng.random() >= share:
            continue
        day = rng.randint(1, days)
        clinic = rng.choice(CLINICS)
        if scheduled < len(FIRST_STATUSES):
            status = FIRST_STATUSES[scheduled]
        else:
            status = rng.choices(statuses, weights)[0]
        scheduled += 1
        patient = f"p{index:07d}"
        number += 1
        yield _appointment(number, patient, clinic, as_of + timedelta(days=day), status, rng)
        rebook = status == "cancelled" and scheduled > len(FIRST_STATUSES) and rng.random() < 0.5
        if rebook and day < days:
            number += 1
            later = as_of + timedelta(days=rng.randint(day + 1, days))
            yield _appointment(number, patient, clinic, later, "booked", rng)


def _appointment(
    number: int,
    patient: str,
    clinic: tuple[str, str, str, str, str, str],
    day: date,
    status: str,
    rng: random.Random,
) -> Resource:
    practitioner, _family, location, _place, code, display = clinic
    hour, minute = rng.randint(8, 15), rng.choice([0, 20, 40])
    start = f"{day.isoformat()}T{hour:02d}:{minute:02d}:00{OFFSET}"
    end = f"{day.isoformat()}T{hour:02d}:{minute + 19:02d}:00{OFFSET}"
    appointment: Resource = {
        "resourceType": "Appointment",
        "id": f"appt-{number:05d}",
        "status": status,
        "serviceType": [{"coding": [{"system": CLINIC_SYSTEM, "code": code, "display": display}]}],
        "start": start,
        "end": end,
        "minutesDuration": 20,
        "participant": [
            {"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"},
            {"actor": {"reference": f"Practitioner/{practitioner}"}, "status": "accepted"},
            {"actor": {"reference": f"Location/{location}"}, "status": "accepted"},
        ],
    }
    if status == "cancelled":
        appointment["cancelationReason"] = {"text": "Patient request"}
    return appointment
