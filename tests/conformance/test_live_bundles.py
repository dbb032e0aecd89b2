"""What write-back sends to a real server, and what a dry run prints, is valid R4.

Each test gets a fresh sekmet-fhir (no ResearchStudy, no CodeSystem on it yet), the RELIEVE
rule-test patients, and the HAPI FHIR instance validator. A dry run is run as a real process
whose stdout is piped, as a user would; a real write-back records each Bundle the client sends
(the server receives it unchanged) and checks what the server then holds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.fhir import writeback
from service.fhir.client import FhirClient, Json
from service.fhir.codesystems import code_systems_for
from service.ruleset.loader import RuleSet
from tests.conformance.validator import InstanceValidator, errors_of
from tests.helpers import AS_OF, screen_cli
from tests.integration.conftest import LoadedPatients, fhir_get, fhir_put, search_all
from tests.integration.servers import SekmetServer

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def urn_problems(bundle: Json) -> list[str]:
    """Why this Bundle could not be sent on its own: fullUrls that are neither absolute nor
    urn:uuid, and urn:uuid references to no entry of the Bundle."""
    problems = []
    full_urls = set()
    for number, entry in enumerate(bundle["entry"]):
        full_url = entry.get("fullUrl", "")
        if not (full_url.startswith(("urn:uuid:", "http://", "https://"))):
            problems.append(f"entry {number}: fullUrl {full_url!r}")
        full_urls.add(full_url)
    for reference in references(bundle):
        if reference.startswith("urn:") and reference not in full_urls:
            problems.append(f"reference to {reference}, which no entry of this Bundle defines")
    return problems


def references(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return found + [r for v in value.values() for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


def entry_types(bundle: Json) -> list[str]:
    return [e["resource"]["resourceType"] for e in bundle["entry"]]


@dataclass
class DryRun:
    server: SekmetServer
    stdout: str
    stderr: str

    def bundles(self) -> list[Json]:
        """The JSON lines of stdout (whatever else it may hold)."""
        lines = self.stdout.splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DryRun]:
    """``prescreen screen --dry-run`` as a process whose stdout is piped, on a fresh server
    holding the RELIEVE rule-test patients (no study, no CodeSystem yet)."""
    workdir = tmp_path_factory.mktemp("dry-run")
    server = SekmetServer(workdir / "sekmet")
    try:
        server.start()
        loaded = LoadedPatients(server.base_url, "dry0x")
        command = [
            sys.executable,
            "-m",
            "service",
            "screen",
            "--trial",
            "relieve",
            "--fhir-url",
            server.base_url,
            "--as-of",
            AS_OF,
            "--out",
            str(workdir / "out"),
            "--patients",
            ",".join(loaded.patient_ids),
            "--dry-run",
        ]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        yield DryRun(server, done.stdout, done.stderr)
    finally:
        server.stop()


def test_a_dry_run_prints_the_bundles_alone_on_stdout(dry_run: DryRun) -> None:
    lines = dry_run.stdout.splitlines()
    assert lines
    for line in lines:
        bundle = json.loads(line)  # NDJSON: every line one Bundle, nothing else
        assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "transaction")
    assert "pre-screening, as of" in dry_run.stderr  # the tables went to stderr


def test_each_printed_bundle_can_be_sent_alone(dry_run: DryRun) -> None:
    bundles = dry_run.bundles()
    assert len(bundles) >= 4
    assert {i: urn_problems(b) for i, b in enumerate(bundles) if urn_problems(b)} == {}


def test_a_dry_run_prints_what_a_first_run_sends(dry_run: DryRun) -> None:
    # On an empty server: the CodeSystems, the study, then one Bundle per new candidate.
    bundles = dry_run.bundles()
    assert entry_types(bundles[0]) == ["CodeSystem"] * 5
    assert entry_types(bundles[1]) == ["ResearchStudy"]
    patients = bundles[2:]
    assert len(patients) >= 2
    for bundle in patients:
        types = entry_types(bundle)
        assert types[:2] == ["ResearchStudy", "ResearchSubject"]
        assert types.count("Observation") == 13 and types[-1] == "Provenance"


def test_the_printed_bundles_are_valid(dry_run: DryRun, fhir_validator: InstanceValidator) -> None:
    bundles = dry_run.bundles()
    results = fhir_validator.validate(bundles, "dry-run")
    assert len(results) == len(bundles)
    assert errors_of(results) == ""


def test_a_dry_run_writes_nothing(dry_run: DryRun) -> None:
    base = dry_run.server.base_url
    assert search_all(base, "ResearchStudy", {}) == []
    assert search_all(base, "ResearchSubject", {}) == []
    assert search_all(base, "CodeSystem", {}) == []


def test_live_write_back_sends_valid_bundles_and_publishes_code_systems_once(
    fresh_sekmet: SekmetServer,
    loaded: LoadedPatients,
    fhir_validator: InstanceValidator,
    relieve: RuleSet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = fresh_sekmet.base_url
    sent: list[Json] = []
    send = FhirClient.bundle

    async def recording(self: FhirClient, bundle_type: str, entries: list[Json]) -> Json:
        if bundle_type == "transaction":
            sent.append({"resourceType": "Bundle", "type": bundle_type, "entry": entries})
        return await send(self, bundle_type, entries)

    monkeypatch.setattr(FhirClient, "bundle", recording)
    # Every create shape is validated in the dry run above; here a dozen patients (the plain
    # candidate among them) are enough for what is sent for real.
    candidate_id = next(pid for pid, t in loaded.tests.items() if t.id == "candidate")
    chosen = {candidate_id, *loaded.patient_ids[::6]}
    ids = ",".join(sorted(chosen))
    assert screen_cli("--fhir-url", base, tmp_path / "run1", "--patients", ids, "--write-back") == 0
    first = list(sent)
    assert entry_types(first[0]) == ["CodeSystem"] * 5
    assert entry_types(first[1]) == ["ResearchStudy"]

    # A second run, as a new process would (nothing remembered), over unchanged data sends
    # nothing, CodeSystems included: each is on the server once.
    sent.clear()
    monkeypatch.setattr(writeback, "_SETTLED", set())
    assert screen_cli("--fhir-url", base, tmp_path / "run2", "--patients", ids, "--write-back") == 0
    assert sent == []
    stored = search_all(base, "CodeSystem", {"_count": "100"})
    assert sorted((cs["url"], cs["version"]) for cs in stored) == sorted(
        (cs["url"], cs["version"]) for cs in code_systems_for(relieve)
    )

    # A candidate gains a liver metastasis: the update of the subject is sent too.
    subjects = search_all(base, "ResearchSubject", {"_tag": "urn:prescreen:study|NCT06746103"})
    (candidate,) = [
        s for s in subjects if s["individual"]["reference"] == f"Patient/{candidate_id}"
    ]
    assert candidate["status"] == "candidate"
    patient_ref = candidate["individual"]["reference"]
    liver = {
        "resourceType": "Condition",
        "id": patient_ref.split("/")[1] + "-liver",
        "subject": {"reference": patient_ref},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "C78.7"}]},
    }
    assert fhir_put(f"{base}/Condition/{liver['id']}", json=liver).status_code in (200, 201)
    assert screen_cli("--fhir-url", base, tmp_path / "run3", "--patients", ids, "--write-back") == 0
    (update,) = sent
    subject_entry = update["entry"][0]
    assert subject_entry["request"]["method"] == "PUT"
    assert subject_entry["fullUrl"] == f"{base}/ResearchSubject/{candidate['id']}"
    assert fhir_get(f"{base}/ResearchSubject/{candidate['id']}").json()["status"] == "ineligible"

    bundles = [*first, *sent]
    for bundle in bundles:
        assert urn_problems(bundle) == []
    results = fhir_validator.validate(bundles, "write-back")
    assert errors_of(results) == ""

    # What the server holds now: the criterion Observations carry kind and manual as codes.
    observations = search_all(
        base, "Observation", {"_tag": "urn:prescreen:study|NCT06746103", "_count": "200"}
    )
    assert observations
    kinds = {c.id: (c.kind, c.manual) for c in relieve.criteria}
    for observation in observations:
        code = observation["code"]["coding"][0]["code"]
        components = {c["code"]["coding"][0]["code"]: c for c in observation["component"]}
        kind = components["criterion-kind"]["valueCodeableConcept"]["coding"][0]
        assert (kind["code"], components["manual"]["valueBoolean"]) == kinds[code]
    assert errors_of(fhir_validator.validate(observations, "stored-observations")) == ""
