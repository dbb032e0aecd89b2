"""What the constrained HAPI cannot show on demand: the other ways a server says it allows
patient-scoped queries only (an OperationOutcome's words, a searchset's outcome entry), what is
not such a refusal, and a clinic list from a server that ignores the date or sends odd
participants (respx)."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any

import httpx
import pytest
import respx

from service.errors import CrossPatientSearchRefusedError, FhirServerError, PrescreenError
from service.fhir.appointments import ClinicDays, parse_days, parse_filters, read_clinic
from service.fhir.client import FhirClient, RetryPolicy
from service.fhir.retrieval import discover_cohort
from service.ruleset.loader import RuleSet

BASE = "https://ehr.example/fhir"


def outcome(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "required", "diagnostics": text}],
    }


def cohort(relieve: RuleSet) -> list[str]:
    async def run() -> list[str]:
        async with FhirClient(BASE, retry=RetryPolicy(attempts=1)) as client:
            return await discover_cohort(client, relieve.mapper, codes_per_request=40, page_size=50)

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (403, outcome("Forbidden")),
        (400, outcome("Bad request")),
        (422, outcome("The patient parameter is required for this search")),
        (
            200,
            {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": outcome("no"), "search": {"mode": "outcome"}}],
            },
        ),
    ],
)
def test_every_form_of_refusal_stops_cohort_discovery_naming_the_lists(
    relieve: RuleSet, status: int, body: dict[str, Any]
) -> None:
    with respx.mock(base_url=BASE) as mock:
        mock.get(url__regex=r".*/Condition.*").mock(return_value=httpx.Response(status, json=body))
        with pytest.raises(CrossPatientSearchRefusedError) as caught:
            cohort(relieve)
    message = str(caught.value)
    assert "--appointments" in message and "--group" in message and "--patients" in message
    assert "patient-scoped" in message


def test_a_server_error_is_not_taken_for_a_refusal(relieve: RuleSet) -> None:
    with respx.mock(base_url=BASE) as mock:
        mock.get(url__regex=r".*/Condition.*").mock(
            return_value=httpx.Response(422, json=outcome("unknown code system"))
        )
        with pytest.raises(FhirServerError) as caught:
            cohort(relieve)
    assert not isinstance(caught.value, CrossPatientSearchRefusedError)


def appointment(aid: str, start: Any, status: str, *actors: tuple[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": aid,
        "status": status,
        "start": start,
        "participant": [{"actor": {"reference": ref}, "status": st} for ref, st in actors],
    }


def test_a_clinic_list_checks_what_the_server_sent() -> None:
    days = ClinicDays(date(2026, 6, 16), date(2026, 6, 17), "Europe/Berlin")
    first = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "next", "url": f"{BASE}/Appointment?page=2"}],
        "entry": [
            {"resource": appointment("a1", "2026-06-16T09:00:00+02:00", "booked",
                                     ("Patient/p1", "accepted"), ("Location/x", "accepted"))},
            # 23:30 UTC on the 15th is 01:30 on the 16th in Berlin: in the days.
            {"resource": appointment("a2", "2026-06-15T23:30:00Z", "arrived",
                                     (f"{BASE}/Patient/p2", "accepted"))},
            {"resource": appointment("a3", "2026-06-16T10:00:00+02:00", "cancelled",
                                     ("Patient/p3", "accepted"))},
            {"resource": appointment("a4", "2026-06-16T10:00:00+02:00", "booked",
                                     ("Patient/p4", "declined"), ("Patient/p5", "accepted"))},
        ],
    }  # fmt: skip
    second = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            # A server that ignored the date: after the last day, and one without a start.
            {"resource": appointment("a5", "2026-06-18T00:00:00+02:00", "booked",
                                     ("Patient/p6", "accepted"))},
            {"resource": appointment("a6", None, "booked", ("Patient/p7", "accepted"))},
            {"resource": appointment("a7", "2026-06-17T12:00:00+02:00", "booked",
                                     ("Practitioner/d", "accepted"))},
            {"resource": appointment("a1", "2026-06-16T09:00:00+02:00", "booked",
                                     ("Patient/p1", "accepted"))},
        ],
    }  # fmt: skip
    with respx.mock(base_url=BASE) as mock:
        search = mock.get(url__regex=r".*/Appointment\?(?!page).*").mock(
            return_value=httpx.Response(200, json=first)
        )
        mock.get(url__regex=r".*/Appointment\?page=2").mock(
            return_value=httpx.Response(200, json=second)
        )

        async def run() -> Any:
            async with FhirClient(BASE) as client:
                return await read_clinic(
                    client,
                    days,
                    parse_filters(["practitioner=Practitioner/d"]),
                    {"cancelled", "noshow", "entered-in-error"},
                    page_size=50,
                )

        found = asyncio.run(run())
    params = search.calls[0].request.url.params
    assert params.get_list("date") == ["ge2026-06-16T00:00:00+02:00", "lt2026-06-18T00:00:00+02:00"]
    assert params["practitioner"] == "Practitioner/d"
    assert found.patients == ["p1", "p2", "p5"]
    assert found.read == 7  # a1 once
    assert dict(found.ignored) == {
        "status cancelled": 1,
        "start outside the days": 2,
        "no patient participant": 1,
    }
    assert {v.appointment: v.day.isoformat() for v in found.visits}["a2"] == "2026-06-16"


def test_days_and_filters_are_read_strictly() -> None:
    assert parse_days("2026-06-16") == ClinicDays(date(2026, 6, 16), date(2026, 6, 16))
    assert parse_days("2026-06-16..2026-06-18", "Europe/Berlin").last == date(2026, 6, 18)
    for wrong in ("tomorrow", "2026-06-18..2026-06-16", "2026-06-16.."):
        with pytest.raises(PrescreenError):
            parse_days(wrong)
    with pytest.raises(PrescreenError):
        parse_days("2026-06-16", "Mars/Olympus")
    for item in ("practitioner", "=x", "date=2026-06-16"):
        with pytest.raises(PrescreenError):
            parse_filters([item])
