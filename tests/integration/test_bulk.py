"""Bulk Data $export against the real FHIR servers: the same verdicts as REST and offline."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.cli import main
from service.settings import get_settings
from tests.helpers import read_ndjson, screen_cli
from tests.integration.conftest import LoadedPatients, fhir_put

pytestmark = pytest.mark.integration
_groups = itertools.count()


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Poll every half second at first, and at least every 2 s: a local test server (HAPI
    FHIR asks for 120 s between polls, which a production run honours)."""
    monkeypatch.setenv("PRESCREEN_BULK_POLL_SECONDS", "0.5")
    monkeypatch.setenv("PRESCREEN_BULK_POLL_MAX_SECONDS", "2")
    monkeypatch.setenv("PRESCREEN_BULK_RETRY_AFTER_MAX_SECONDS", "2")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def verdicts(out: Path) -> dict[str, dict[str, Any]]:
    return {v["patient"]: v for v in read_ndjson(out / "verdicts.ndjson")}


def offline(patients: LoadedPatients, tmp_path: Path) -> dict[str, dict[str, Any]]:
    source = patients.write_ndjson(tmp_path / "ndjson")
    assert screen_cli("--source", str(source), tmp_path / "offline") == 0
    return verdicts(tmp_path / "offline")


def rest(base_url: str, patients: LoadedPatients, out: Path) -> dict[str, dict[str, Any]]:
    ids = ",".join(patients.patient_ids)
    assert screen_cli("--fhir-url", base_url, out, "--patients", ids) == 0
    return verdicts(out)


def group_of(base_url: str, patients: LoadedPatients) -> str:
    """A Group holding exactly these patients (the session's server holds others too)."""
    group_id = f"bulk-group-{next(_groups)}-{patients.patient_ids[0].split('-')[0]}"
    group = {
        "resourceType": "Group",
        "id": group_id,
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": f"Patient/{pid}"}} for pid in patients.patient_ids],
    }
    assert fhir_put(f"{base_url}/Group/{group_id}", json=group).status_code in (200, 201)
    return group_id


def bulk(base_url: str, out: Path, *extra: str) -> int:
    return screen_cli("--fhir-url", base_url, out, "--bulk", *extra)


def export(base_url: str, out: Path, *extra: str) -> int:
    command = ["export", "--fhir-url", base_url, "--out", str(out), "--no-progress"]
    return main([*command, *extra])


def state(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "export.json").read_text()))


def test_group_export_gives_the_rest_and_the_offline_verdicts_then_adds_changes(
    fhir_server: Any,
    patients: LoadedPatients,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = fhir_server.base_url
    expected = offline(patients, tmp_path)
    by_rest = rest(base, patients, tmp_path / "rest")
    group = group_of(base, patients)
    out = tmp_path / "bulk"

    assert bulk(base, out, "--group", group) == 0
    by_bulk = verdicts(out)
    assert by_bulk == expected
    assert by_bulk == by_rest
    # Medication is outside the Patient compartment: the referenced ones were read by id.
    job = state(out / "bulk")["jobs"][-1]
    kinds = {(f["kind"], f["type"]) for f in job["files"]}
    assert ("referenced", "Medication") in kinds
    assert all(f["done"] for f in job["files"])
    # The server took the DELETE (what it does with a finished job's files is its choice).
    assert job["phase"] == "finished" and job["deleted"] is True
    print(f"{fhir_server.name}: _typeFilter {job['type_filter']}")
    # The outputs are those of an offline run over the downloaded folder, byte for byte.
    assert screen_cli("--source", str(out / "bulk"), tmp_path / "again") == 0
    for name in ("verdicts.ndjson", "ResearchSubject.ndjson", "ResearchStudy.ndjson"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()

    if not job["request"]["type_filters"]:
        # The server does not declare _typeFilter: sent anyway, it must change nothing either.
        monkeypatch.setenv("PRESCREEN_BULK_TYPE_FILTER", "always")
        get_settings.cache_clear()
        assert bulk(base, tmp_path / "filtered", "--group", group) == 0
        assert verdicts(tmp_path / "filtered") == expected
        job = state(tmp_path / "filtered" / "bulk")["jobs"][-1]
        monkeypatch.delenv("PRESCREEN_BULK_TYPE_FILTER")
        get_settings.cache_clear()
    assert any(f.startswith("Condition?code=") for f in job["request"]["type_filters"])

    # A candidate gains a liver metastasis; --since exports that change alone and adds it.
    candidate = next(pid for pid, t in patients.tests.items() if t.id == "candidate")
    assert by_bulk[f"Patient/{candidate}"]["verdict"] == "candidate"
    since = datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    time.sleep(1.1)  # lastUpdated has second precision on some servers
    liver = {
        "resourceType": "Condition",
        "id": f"{candidate}-liver",
        "subject": {"reference": f"Patient/{candidate}"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "C78.7"}]},
    }
    assert fhir_put(f"{base}/Condition/{liver['id']}", json=liver).status_code in (200, 201)

    assert bulk(base, out, "--group", group, "--since", since) == 0
    second = verdicts(out)
    assert second[f"Patient/{candidate}"]["verdict"] == "ineligible"
    assert {p: v for p, v in second.items() if p != f"Patient/{candidate}"} == {
        p: v for p, v in by_bulk.items() if p != f"Patient/{candidate}"
    }
    assert second == rest(base, patients, tmp_path / "rest-after")
    jobs = state(out / "bulk")["jobs"]
    assert [j["request"]["since"] for j in jobs] == [None, since]
    delta = [f for f in jobs[1]["files"] if f["kind"] == "output"]
    assert [f["type"] for f in delta] == ["Condition"]  # only what changed travelled


def test_patient_level_export_command_then_a_restart_fetches_only_what_is_missing(
    fhir_server: Any, patients: LoadedPatients, tmp_path: Path
) -> None:
    if fhir_server.name == "hapi":
        # One HAPI export takes one to two minutes (its batch jobs); the group test above runs
        # the whole protocol on HAPI already. The command and its restart are the client's own
        # behaviour, checked on sekmet-fhir and with faults injected (tests/unit/test_bulk_faults).
        pytest.skip("the export command's restart is checked on sekmet-fhir")
    base = fhir_server.base_url
    expected = offline(patients, tmp_path)
    folder = tmp_path / "export"
    assert export(base, folder, "--trial", "relieve", "--keep-export") == 0
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".ndjson"))
    assert "Patient.1.ndjson" in names and "Condition.1.ndjson" in names
    assert not list(folder.glob("*.part"))
    assert screen_cli("--source", str(folder), tmp_path / "screened") in (0, 1)
    got = verdicts(tmp_path / "screened")
    # The whole server was exported (other tests' patients too): ours are exactly as offline.
    assert {p: got[p] for p in expected} == expected

    # As if the run had been stopped halfway through the largest file: half of it on disk
    # under its partial name, the rest not yet downloaded, the job not finished.
    before = {p.name: p.read_bytes() for p in folder.glob("*.ndjson")}
    saved = state(folder)
    job = saved["jobs"][-1]
    assert job["deleted"] is False  # --keep-export
    outputs = [f for f in job["files"] if f["kind"] == "output"]
    cut = max(outputs, key=lambda f: f["bytes"])
    whole = folder / f"{cut['type']}.{cut['index']}.ndjson"
    data = whole.read_bytes()
    whole.unlink()
    (folder / f"{cut['type']}.{cut['index']}.part").write_bytes(data[: len(data) // 2])
    cut["done"] = False
    job["phase"] = "running"
    (folder / "export.json").write_text(json.dumps(saved))
    untouched = {
        p.name: p.stat().st_mtime_ns for p in folder.glob("*.ndjson") if p.name != whole.name
    }

    assert export(base, folder, "--trial", "relieve") == 0
    assert {p.name: p.read_bytes() for p in folder.glob("*.ndjson")} == before
    assert {
        p.name: p.stat().st_mtime_ns for p in folder.glob("*.ndjson") if p.name != whole.name
    } == untouched
    job = state(folder)["jobs"][-1]
    assert len(state(folder)["jobs"]) == 1  # the same job, not a new export
    assert job["phase"] == "finished" and job["deleted"] is True


def test_since_without_an_earlier_export_is_refused(fhir_server: Any, tmp_path: Path) -> None:
    code = bulk(fhir_server.base_url, tmp_path / "out", "--since", "2026-01-01T00:00:00Z")
    assert code == 2
    assert not (tmp_path / "out" / "verdicts.ndjson").exists()
