"""``prescreen load`` of a Synthea 3.3.0 Bulk Data export into a real server, then screening.

The export (tests/data/synthea, see make_sample.py there) references Locations, Practitioners
and Organizations conditionally (``Location?identifier=…``) from files read before theirs, and
holds types no fixed load order names (PractitionerRole, Claim, ExplanationOfBenefit,
Provenance…). It must load as it is, and a live screening of it must give the offline verdicts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service.cli import main
from tests.helpers import AS_OF, read_ndjson
from tests.integration.conftest import fhir_get

pytestmark = pytest.mark.integration
SYNTHEA_DIR = Path(__file__).resolve().parent.parent / "data" / "synthea"


def resources_of(pattern: str) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(SYNTHEA_DIR.glob(pattern))
        for line in path.read_text().splitlines()
        if line
    ]


def test_a_synthea_export_loads_and_screens_live_as_offline(
    fhir_server: Any, tmp_path: Path
) -> None:
    base = fhir_server.base_url
    load = ["load", "--source", str(SYNTHEA_DIR), "--fhir-url", base, "--no-progress"]
    assert main([*load, "--per-bundle", "50"]) == 0

    # Every resource is there under its own id; conditional references became literal ones
    # that resolve on the server.
    encounters = resources_of("Encounter.ndjson")
    for encounter in encounters:
        stored = fhir_get(f"{base}/Encounter/{encounter['id']}").json()
        location = stored["location"][0]["location"]["reference"]
        assert location.startswith("Location/"), location
        assert fhir_get(f"{base}/{location}").status_code == 200
        practitioner = stored["participant"][0]["individual"]["reference"]
        assert fhir_get(f"{base}/{practitioner}").json()["resourceType"] == "Practitioner"
    for pattern in ("Provenance.ndjson", "ExplanationOfBenefit.ndjson", "PractitionerRole.*"):
        for resource in resources_of(pattern):
            url = f"{base}/{resource['resourceType']}/{resource['id']}"
            assert fhir_get(url).status_code == 200, url

    # Loading again changes nothing a reader sees (every write is a PUT by id).
    assert main([*load, "--per-bundle", "500"]) == 0
    assert (
        fhir_get(f"{base}/Encounter/{encounters[0]['id']}")
        .json()["location"][0]["location"]["reference"]
        .startswith("Location/")
    )

    patients = ",".join(p["id"] for p in resources_of("Patient.ndjson"))
    screen = ["screen", "--trial", "relieve,ssrs", "--as-of", AS_OF, "--no-progress"]
    offline, live = tmp_path / "offline", tmp_path / "live"
    assert main([*screen, "--source", str(SYNTHEA_DIR), "--out", str(offline)]) == 0
    assert main([*screen, "--fhir-url", base, "--patients", patients, "--out", str(live)]) == 0
    evidence: set[str] = set()
    for trial in ("relieve", "ssrs"):
        expected = read_ndjson(offline / trial / "verdicts.ndjson")
        assert len(expected) == 3
        assert read_ndjson(live / trial / "verdicts.ndjson") == expected
        for line in expected:
            evidence.update(e for c in line["criteria"].values() for e in c["evidence"])
    # The data reach the rules: a criterion is decided by a Synthea resource besides a Patient.
    assert {e.split("/")[0] for e in evidence} - {"Patient"}
