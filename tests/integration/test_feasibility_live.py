"""Feasibility of a FHIR server: each trial's cohort fetched as a live run fetches it, counted
as the same patients' NDJSON files are counted offline."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from service.cli import main
from service.ruleset.loader import RuleSet
from service.screening.feasibility import count_folder, count_server
from service.settings import get_settings
from tests.integration.conftest import LoadedPatients
from tests.integration.servers import SekmetServer

pytestmark = pytest.mark.integration
START, END = date(2026, 4, 1), date(2026, 6, 15)


@pytest.fixture
def own_sekmet(tmp_path: Path) -> Iterator[SekmetServer]:
    """A server of its own: the counts are of every patient on it."""
    server = SekmetServer(tmp_path / "sekmet")
    try:
        yield server.start()
    finally:
        server.stop()


def test_a_servers_cohort_is_counted_as_offline(
    own_sekmet: SekmetServer, relieve: RuleSet, tmp_path: Path
) -> None:
    patients = LoadedPatients(own_sekmet.base_url, "fx")
    folder = patients.write_ndjson(tmp_path / "ndjson")
    (offline,) = count_folder([relieve], folder, START, END).trials
    counts = asyncio.run(count_server(get_settings(), own_sekmet.base_url, [relieve], START, END))
    (live,) = counts.trials
    # The cohort holds every patient who is not plainly ineligible...
    for verdict in ("candidate", "potential-candidate"):
        assert live.verdicts[verdict] == offline.verdicts[verdict] > 0
    assert sum(live.verdicts.values()) < sum(offline.verdicts.values())
    # ...so from the criterion that needs a spinal metastasis on, the funnel is the same.
    after = [s.label for s in offline.funnel].index("spinal-metastasis")
    assert live.funnel[after:] == offline.funnel[after:]
    assert live.new_candidates == offline.new_candidates and sum(live.new_candidates) > 0

    out = tmp_path / "report"
    command = ["feasibility", "--trial", "relieve", "--fhir-url", own_sekmet.base_url]
    command += ["--from", START.isoformat(), "--to", END.isoformat(), "--out", str(out)]
    assert main([*command, "--no-progress"]) in (0, 1)
    report = json.loads((out / "feasibility.json").read_text())
    assert report["source"] == "FHIR server"
    assert [m["month"] for m in report["trials"][0]["months"]] == ["2026-04", "2026-05", "2026-06"]
