"""A run that loses the server midway says who was not screened, and resumes cleanly."""

from __future__ import annotations

import asyncio
import json
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.fhir.client import FhirClient, RetryPolicy
from service.ruleset.loader import RuleSet
from service.screening.live import LiveOptions, LiveSummary, Selection, screen_server
from tests.integration.conftest import LoadedPatients, search_all
from tests.integration.test_live import offline, read_ndjson, subjects_of

pytestmark = pytest.mark.integration


class ServerLostAfter(httpx.AsyncBaseTransport):
    """Forwards to the real server, then behaves as if its network went away."""

    def __init__(self, requests: int) -> None:
        self.left = requests
        self.real = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.left <= 0:
            raise httpx.ConnectError("connection refused", request=request)
        self.left -= 1
        return await self.real.handle_async_request(request)

    async def aclose(self) -> None:
        await self.real.aclose()


def run(
    relieve: RuleSet,
    base_url: str,
    options: LiveOptions,
    transport: httpx.AsyncBaseTransport | None,
) -> LiveSummary:
    async def go() -> LiveSummary:
        retry = RetryPolicy(attempts=2, base_delay=0.01)
        async with FhirClient(base_url, retry=retry, transport=transport) as client:
            return await screen_server(relieve, client, options)

    return asyncio.run(go())


def test_lost_server_then_resume(
    fhir_server: Any, patients: LoadedPatients, relieve: RuleSet, tmp_path: Path
) -> None:
    base = fhir_server.base_url
    expected = offline(patients.write_ndjson(tmp_path / "ndjson"), tmp_path / "offline")
    options = LiveOptions(
        as_of=date(2026, 6, 15),
        out=tmp_path / "live",
        selection=Selection("ids", ids=tuple(patients.patient_ids)),
        write_back=True,
        patients_per_request=5,
        parallel_groups=1,
    )

    first = run(relieve, base, options, ServerLostAfter(12))
    assert first.exit_code == 1 and first.unscreened
    assert 0 < first.patients < len(patients.patient_ids)
    listed = {line["patient"] for line in read_ndjson(options.out / "unscreened.ndjson")}
    assert listed == {f"Patient/{pid}" for pid in first.unscreened}
    assert all("server unavailable" in r or "not attempted" in r for r in first.unscreened.values())

    resumed = run(relieve, base, LiveOptions(**{**options.__dict__, "resume": True}), None)
    assert resumed.exit_code == 0 and not resumed.unscreened
    assert resumed.resumed == first.patients
    got = {v["patient"]: v for v in read_ndjson(options.out / "verdicts.ndjson")}
    assert got == expected

    subjects = subjects_of(base, patients)
    assert len({s["individual"]["reference"] for s in subjects}) == len(subjects)  # no duplicates
    assert {s["individual"]["reference"] for s in subjects} == {
        p for p, v in expected.items() if v["verdict"] != "ineligible"
    }
    provenance = search_all(base, "Provenance", {"_count": "200"})
    mine = {s["id"] for s in subjects}
    targets = [
        t["reference"]
        for p in provenance
        for t in p["target"]
        if t["reference"].split("/")[-1] in mine
    ]
    assert len(targets) == len(subjects)  # one Provenance per written subject, none twice
    summary = json.loads((options.out / "summary.json").read_text())
    assert summary["live"]["resumed_from_checkpoint"] == first.patients
