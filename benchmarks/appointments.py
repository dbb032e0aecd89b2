"""A clinic's list, patient by patient, on an EHR that allows patient-scoped queries only.

``python -m benchmarks.appointments [--sizes 20,100,1000] [--patients 1300]``

HAPI FHIR in its constrained mode (tests/hapi PatientScopedInterceptor: a search of a clinical
type names exactly one patient; Group-level export only) is started once on 127.0.0.1 and
loaded with a synthetic hospital and a clinic schedule written here: one clinic day per list
size, each with that many booked patients and a tenth as many cancelled, no-show or
entered-in-error appointments of other patients (left out of the list). Each list is screened
for RELIEVE and SSRS on one reading (``--appointments DAY``, in-process, the run's own request
counter): the requests per screened patient (the Appointment search and its pages, the
capability check, the refused multi-patient searches that teach the run to ask one patient at a
time, then one batch of searches per patient and any further pages) and the wall time. Writes
``benchmarks/results/appointments.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import AS_OF, ROOT, write_outputs

SIZES = (20, 100, 1000)
PATIENTS = 1300
SPINAL_FRACTION = 0.1
MEDIAN_BACKGROUND = 3
IGNORED_STATUSES = ("cancelled", "noshow", "entered-in-error")


def clinic_days(sizes: tuple[int, ...], patients: int) -> list[tuple[str, list[dict[str, Any]]]]:
    """A day per list size after AS_OF: ``size`` booked patients (each list its own, taken
    in turn from the population), and a tenth as many appointments to leave out."""
    if sum(sizes) * 11 // 10 + len(sizes) > patients:
        raise SystemExit(f"--patients {patients} is too few for lists of {sizes}")
    days = []
    taken = 0
    number = 0
    for offset, size in enumerate(sizes, start=1):
        day = (AS_OF + timedelta(days=offset)).isoformat()
        schedule = []
        ignored = max(1, size // 10)
        for index in range(size + ignored):
            number += 1
            status = "booked" if index < size else IGNORED_STATUSES[index % 3]
            minute = index % 480
            schedule.append(
                {
                    "resourceType": "Appointment",
                    "id": f"bench-{number:06d}",
                    "status": status,
                    "start": f"{day}T{8 + minute // 60:02d}:{minute % 60:02d}:00Z",
                    "participant": [
                        {"actor": {"reference": f"Patient/p{taken:07d}"}, "status": "accepted"}
                    ],
                }
            )
            taken += 1
        days.append((day, schedule))
    return days


def measure(
    sizes: tuple[int, ...] = SIZES,
    patients: int = PATIENTS,
    spinal_fraction: float = SPINAL_FRACTION,
    median_background: int = MEDIAN_BACKGROUND,
) -> list[dict[str, Any]]:
    from service.fhir.appointments import parse_days
    from service.fhir.client import FhirClient
    from service.fhir.loader import folder_readers, load_readers, load_resources
    from service.ruleset.loader import load_ruleset
    from service.screening.live import Selection, live_options, screen_portfolio_url
    from service.settings import Settings
    from tests.integration.servers import HapiServer

    folder = common.population(patients, "hospital", spinal_fraction, median_background)
    days = clinic_days(sizes, patients)
    rulesets = [
        load_ruleset(ROOT / "rules" / f"{trial}.yaml", ROOT / "fhir_mappings")
        for trial in ("relieve", "ssrs")
    ]
    settings = Settings()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        server = HapiServer(Path(work) / "hapi", constrained=True).start()
        try:

            async def load() -> float:
                started = time.perf_counter()
                async with FhirClient(server.base_url, timeout=600) as client:
                    await load_readers(client, folder_readers(folder), per_bundle=500)
                    await load_resources(client, [a for _, day in days for a in day])
                return time.perf_counter() - started

            print("  loading the population and the clinic days into HAPI ...", flush=True)
            load_seconds = asyncio.run(load())
            print(f"  loaded in {load_seconds:.0f}s", flush=True)
            for size, (day, _schedule) in zip(sizes, days, strict=True):
                selection = Selection(
                    "appointments",
                    days=parse_days(day),
                    ignored_statuses=frozenset(IGNORED_STATUSES),
                )
                options = live_options(
                    settings, as_of=AS_OF, out=Path(work) / f"out-{size}", selection=selection
                )
                load_before = os.getloadavg()[0]
                started = time.perf_counter()
                portfolio = asyncio.run(
                    screen_portfolio_url(settings, server.base_url, rulesets, options)
                )
                seconds = time.perf_counter() - started
                summary = portfolio.summaries[0]
                chosen = summary.selection
                rows.append(
                    {
                        "clinic_list": size,
                        "screened": portfolio.screened,
                        "appointments_read": chosen["appointments_read"],
                        "appointments_ignored": sum(chosen["appointments_ignored"].values()),
                        "requests": portfolio.requests,
                        "requests_per_screened_patient": round(
                            portfolio.requests / portfolio.screened, 3
                        ),
                        "requests_by_kind": dict(summary.requests_by_kind),
                        "seconds": round(seconds, 2),
                        "ms_per_patient": round(1000 * seconds / portfolio.screened, 1),
                        "load_before": round(load_before, 2),
                        "load_after": round(os.getloadavg()[0], 2),
                    }
                )
                print(f"  {rows[-1]}", flush=True)
        finally:
            server.stop()
    for row in rows:
        row["load_seconds"] = round(load_seconds, 1)
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    notes = [
        "Clinic lists screened patient by patient for RELIEVE and SSRS on one reading "
        "(--appointments DAY), against HAPI FHIR 8.8.0 in its constrained mode (a search of a "
        "clinical type names exactly one patient) on 127.0.0.1, holding a synthetic hospital "
        f"(AS_OF {AS_OF}) and a clinic day per list size; one run per size, in-process.",
        "requests: every HTTP request of the run (capability check, the Appointment search "
        "and its pages, the multi-patient searches refused once before the run reads one "
        "patient at a time, a batch of searches per patient, further pages); seconds: wall "
        "time of the whole run, files written included; load: the 1-minute load average "
        "before and after (2 cores shared with other work).",
    ]
    columns = [
        "clinic_list",
        "screened",
        "appointments_read",
        "appointments_ignored",
        "requests",
        "requests_per_screened_patient",
        "seconds",
        "ms_per_patient",
        "load_before",
        "load_after",
    ]
    write_outputs("appointments", rows, columns, notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="clinic list sizes")
    common.population_arguments(parser, PATIENTS, SPINAL_FRACTION, MEDIAN_BACKGROUND)
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    report(measure(sizes, args.patients, args.spinal_fraction, args.median_background))


if __name__ == "__main__":
    main()
