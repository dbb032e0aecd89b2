"""Live screening and write-back against a real FHIR server."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.cli import main
from tests.helpers import read_ndjson, screen_cli
from tests.integration.conftest import LoadedPatients, fhir_get, fhir_put, search_all
from tests.proxy import RefusingProxy

pytestmark = pytest.mark.integration
STUDY_TAG = "urn:prescreen:study|NCT06746103"


def live(base_url: str, out: Path, *extra: str) -> int:
    return screen_cli("--fhir-url", base_url, out, *extra)


def offline(source: Path, out: Path) -> dict[str, dict[str, Any]]:
    assert screen_cli("--source", str(source), out) == 0
    return {v["patient"]: v for v in read_ndjson(out / "verdicts.ndjson")}


def subjects_of(base_url: str, patients: LoadedPatients) -> list[dict[str, Any]]:
    found = search_all(base_url, "ResearchSubject", {"_tag": STUDY_TAG, "_count": "200"})
    mine = {f"Patient/{pid}" for pid in patients.patient_ids}
    return [s for s in found if s["individual"]["reference"] in mine]


def count(base_url: str, resource_type: str, **params: str) -> int:
    """How many resources match, asked with _summary=count (query values URL-encoded)."""
    answer = fhir_get(f"{base_url}/{resource_type}", params={**params, "_summary": "count"})
    return int(answer.json()["total"])


def test_live_cohort_run_gives_the_offline_verdicts(
    fhir_server: Any, patients: LoadedPatients, tmp_path: Path
) -> None:
    expected = offline(patients.write_ndjson(tmp_path / "ndjson"), tmp_path / "offline")
    assert live(fhir_server.base_url, tmp_path / "live") == 0
    got = {v["patient"]: v for v in read_ndjson(tmp_path / "live" / "verdicts.ndjson")}
    mine = {p: v for p, v in got.items() if p in expected}
    # Cohort discovery finds every patient who is not plainly ineligible...
    assert {p for p, v in expected.items() if v["verdict"] != "ineligible"} <= set(mine)
    # ...and each of them gets exactly the offline verdict, criterion by criterion.
    assert mine == {p: expected[p] for p in mine}
    summary = json.loads((tmp_path / "live" / "summary.json").read_text())
    assert 0 < summary["live"]["requests_per_screened_patient"] <= 2


def test_explicit_patient_ids_give_every_offline_verdict(
    fhir_server: Any, patients: LoadedPatients, tmp_path: Path
) -> None:
    expected = offline(patients.write_ndjson(tmp_path / "ndjson"), tmp_path / "offline")
    ids = ",".join(patients.patient_ids)
    assert live(fhir_server.base_url, tmp_path / "live", "--patients", ids) == 0
    got = {v["patient"]: v for v in read_ndjson(tmp_path / "live" / "verdicts.ndjson")}
    assert got == expected


def test_write_back_is_idempotent_and_respects_people(
    fhir_server: Any, patients: LoadedPatients, tmp_path: Path
) -> None:
    base = fhir_server.base_url
    ids = ",".join(patients.patient_ids)
    assert live(base, tmp_path / "run1", "--patients", ids, "--write-back") == 0
    first = subjects_of(base, patients)
    verdicts = {
        v["patient"]: v["verdict"] for v in read_ndjson(tmp_path / "run1" / "verdicts.ndjson")
    }
    assert {s["individual"]["reference"]: s["status"] for s in first} == {
        p: v for p, v in verdicts.items() if v != "ineligible"
    }
    provenance_before = count(base, "Provenance", _lastUpdated="gt2000-01-01")
    studies = count(base, "ResearchStudy", _tag="urn:prescreen:key|NCT06746103")
    assert studies == 1

    # Run again, unchanged data: nothing is written.
    assert live(base, tmp_path / "run2", "--patients", ids, "--write-back") == 0
    summary = json.loads((tmp_path / "run2" / "summary.json").read_text())
    assert summary["live"]["write_back"]["transactions"] == 0
    assert summary["live"]["write_back"]["unchanged"] == len(first)
    assert sorted(s["id"] for s in subjects_of(base, patients)) == sorted(s["id"] for s in first)
    assert count(base, "Provenance", _lastUpdated="gt2000-01-01") == provenance_before
    assert count(base, "ResearchStudy", _tag="urn:prescreen:key|NCT06746103") == 1

    # A coordinator marks one candidate eligible; another candidate gains a liver metastasis.
    candidates = [s for s in first if s["status"] == "candidate"]
    decided, withdrawn = candidates[0], candidates[1]
    person = {**decided, "status": "eligible"}
    assert fhir_put(
        f"{base}/ResearchSubject/{decided['id']}",
        json=person,
        headers={"Content-Type": "application/fhir+json"},
    ).status_code in (200, 201)
    for subject in (decided, withdrawn):
        patient_ref = subject["individual"]["reference"]
        liver = {
            "resourceType": "Condition",
            "id": patient_ref.split("/")[1] + "-liver",
            "subject": {"reference": patient_ref},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "C78.7"}]},
        }
        assert fhir_put(
            f"{base}/Condition/{liver['id']}",
            json=liver,
            headers={"Content-Type": "application/fhir+json"},
        ).status_code in (200, 201)

    assert live(base, tmp_path / "run3", "--patients", ids, "--write-back") == 0
    after = {s["id"]: s for s in subjects_of(base, patients)}
    assert after[decided["id"]]["status"] == "eligible"  # a person's decision survives
    assert after[withdrawn["id"]]["status"] == "ineligible"  # no longer qualifies
    assert len(after) == len(first)
    summary = json.loads((tmp_path / "run3" / "summary.json").read_text())["live"]["write_back"]
    assert summary["kept_status_set_by_a_person"] == 1 and summary["withdrawn_to_ineligible"] == 1
    assert count(base, "Provenance", _lastUpdated="gt2000-01-01") == provenance_before + 1


def test_a_patient_no_longer_to_screen_has_its_subject_withdrawn(
    fhir_server: Any, patients: LoadedPatients, tmp_path: Path
) -> None:
    base = fhir_server.base_url
    candidate = next(pid for pid, t in patients.tests.items() if t.id == "candidate")
    assert live(base, tmp_path / "run1", "--patients", candidate, "--write-back") == 0
    (subject,) = [
        s
        for s in subjects_of(base, patients)
        if s["individual"]["reference"].endswith(f"/{candidate}")
    ]
    assert subject["status"] == "candidate"

    # The record is merged away (inactive): the patient is not screened any more.
    patient = fhir_get(f"{base}/Patient/{candidate}").json()
    patient = {k: v for k, v in patient.items() if k not in ("meta", "text")}
    assert fhir_put(
        f"{base}/Patient/{candidate}", json={**patient, "active": False}
    ).status_code in (
        200,
        201,
    )
    assert live(base, tmp_path / "run2", "--patients", candidate, "--write-back") == 0
    assert read_ndjson(tmp_path / "run2" / "verdicts.ndjson") == []
    summary = json.loads((tmp_path / "run2" / "summary.json").read_text())
    assert [entry["patient"] for entry in summary["not_screened"]] == [f"Patient/{candidate}"]
    assert summary["live"]["write_back"]["withdrawn_to_ineligible"] == 1
    after = fhir_get(f"{base}/ResearchSubject/{subject['id']}").json()
    assert after["status"] == "ineligible"
    kinds = [i["kind"] for i in read_ndjson(tmp_path / "run2" / "issues.ndjson")]
    assert kinds == ["not-screened"]


def test_results_are_readable_from_the_server_alone(
    fhir_server: Any, patients: LoadedPatients, tmp_path: Path
) -> None:
    base = fhir_server.base_url
    candidate = next(pid for pid, t in patients.tests.items() if t.id == "candidate")
    assert live(base, tmp_path / "out", "--patients", candidate, "--write-back") == 0
    bundle = fhir_get(
        f"{base}/Observation",
        params={"subject": f"Patient/{candidate}", "_tag": STUDY_TAG, "_count": "50"},
    ).json()
    results = {e["resource"]["code"]["coding"][0]["code"]: e["resource"] for e in bundle["entry"]}
    assert len(results) == 13
    pain = results["pain-nrs"]
    assert pain["valueCodeableConcept"]["coding"][0]["code"] == "met"
    assert pain["note"][0]["text"].startswith("latest NRS > 4")
    prefix = candidate.removesuffix("p")
    assert [d["reference"] for d in pain["derivedFrom"]] == [f"Observation/{prefix}nrs-1"]
    assert pain["focus"][0]["reference"].startswith("ResearchSubject/")
    spine = results["spinal-metastasis"]
    supporting = "http://hl7.org/fhir/StructureDefinition/workflow-supportingInfo"
    evidence = [
        e["valueReference"]["reference"] for e in spine["extension"] if e["url"] == supporting
    ]
    assert evidence == [f"Condition/{prefix}spine-lumbar"]
    assert "derivedFrom" not in spine  # a Condition is no valid derivedFrom target in R4


def test_dry_run_prints_transactions_and_writes_nothing(
    fhir_server: Any, patients: LoadedPatients, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = fhir_server.base_url
    candidate = next(pid for pid, t in patients.tests.items() if t.id == "candidate")
    before = len(subjects_of(base, patients))
    assert live(base, tmp_path / "out", "--patients", candidate, "--dry-run") == 0
    # stdout holds only the Bundles, one per line (the tables go to stderr): it can be piped.
    printed = capsys.readouterr().out.splitlines()
    bundles = [json.loads(line) for line in printed]
    assert all(b["resourceType"] == "Bundle" and b["type"] == "transaction" for b in bundles)
    # On a server seen for the first time, the study and prescreen's CodeSystems come first.
    subject_bundles = [
        b
        for b in bundles
        if any(e["resource"]["resourceType"] == "ResearchSubject" for e in b["entry"])
    ]
    assert len(subject_bundles) == 1
    kinds = [e["resource"]["resourceType"] for e in subject_bundles[0]["entry"]]
    assert kinds.count("ResearchSubject") == 1 and kinds.count("Provenance") == 1
    assert kinds.count("Observation") == 13
    assert len(subjects_of(base, patients)) == before


def test_incremental_run_screens_only_changed_patients(
    fhir_server: Any, patients: LoadedPatients, tmp_path: Path
) -> None:
    base = fhir_server.base_url
    # Whole seconds on both sides of the moment: servers differ in timestamp precision.
    time.sleep(1.1)
    moment = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    time.sleep(1.1)
    changed = patients.patient_ids[0]
    patient = fhir_get(f"{base}/Patient/{changed}").json()
    patient["gender"] = "other"
    fhir_put(
        f"{base}/Patient/{changed}", json=patient, headers={"Content-Type": "application/fhir+json"}
    )
    assert live(base, tmp_path / "out", "--since", moment) == 0
    screened = [v["patient"] for v in read_ndjson(tmp_path / "out" / "verdicts.ndjson")]
    assert screened == [f"Patient/{changed}"]


def both_trials_patient(pid: str) -> list[dict[str, Any]]:
    """A patient who is a RELIEVE candidate and qualifies for SSRS as far as data can tell."""
    subject = {"reference": f"Patient/{pid}"}
    snomed, loinc = "http://snomed.info/sct", "http://loinc.org"
    pain_type = {"system": "urn:prescreen:relieve", "code": "axial-triggered"}
    return [
        {"resourceType": "Patient", "id": pid, "birthDate": "1960-03-10", "gender": "male"},
        {
            "resourceType": "Condition",
            "id": f"{pid}-met",
            "subject": subject,
            "code": {"coding": [{"system": snomed, "code": "94602001"}]},
            "bodySite": [
                {"coding": [{"system": snomed, "code": "122496007"}]},  # lumbar spine
                {"coding": [{"system": snomed, "code": "14293000"}]},  # L2
            ],
        },
        {
            "resourceType": "Observation",
            "id": f"{pid}-nrs",
            "status": "final",
            "subject": subject,
            "code": {"coding": [{"system": loinc, "code": "72514-3"}]},
            "effectiveDateTime": "2026-06-10T09:00:00+02:00",
            "valueInteger": 7,
            "component": [
                {
                    "code": {"coding": [{"system": "urn:prescreen:relieve", "code": "pain-type"}]},
                    "valueCodeableConcept": {"coding": [pain_type]},
                }
            ],
        },
        {
            "resourceType": "Observation",
            "id": f"{pid}-survival",
            "status": "final",
            "subject": subject,
            "code": {"coding": [{"system": "urn:prescreen:relieve", "code": "estimated-survival"}]},
            "effectiveDateTime": "2026-06-01",
            "valueQuantity": {"value": 9, "unit": "months"},
        },
        {
            "resourceType": "ServiceRequest",
            "id": f"{pid}-rt",
            "status": "active",
            "intent": "order",
            "subject": subject,
            "code": {"coding": [{"system": snomed, "code": "1217123003"}]},
        },
        {
            "resourceType": "Observation",
            "id": f"{pid}-kps",
            "status": "final",
            "subject": subject,
            "code": {"coding": [{"system": loinc, "code": "89243-0"}]},
            "effectiveDateTime": "2026-06-01",
            "valueInteger": 80,
        },
        {
            "resourceType": "Encounter",
            "id": f"{pid}-visit",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "type": [{"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "99214"}]}],
            "subject": subject,
            "period": {"start": "2026-05-20T09:00:00Z"},
        },
        {
            "resourceType": "DiagnosticReport",
            "id": f"{pid}-mri",
            "status": "final",
            "subject": subject,
            "code": {"coding": [{"system": loinc, "code": "24968-0"}]},
            "effectiveDateTime": "2026-05-25",
        },
    ]


def test_a_portfolio_gives_one_subject_per_trial_and_agrees_with_offline(
    fhir_server: Any, tmp_path: Path
) -> None:
    base = fhir_server.base_url
    pid = f"both{int(time.time() * 1000) % 10_000_000}"
    resources = both_trials_patient(pid)
    for resource in resources:
        url = f"{base}/{resource['resourceType']}/{resource['id']}"
        assert fhir_put(url, json=resource).status_code in (200, 201)
    source = tmp_path / "ndjson"
    source.mkdir()
    for resource in resources:
        with (source / f"{resource['resourceType']}.ndjson").open("a") as handle:
            handle.write(json.dumps(resource) + "\n")

    command = ["screen", "--trial", "relieve,ssrs", "--as-of", "2026-06-15", "--no-progress"]
    assert main([*command, "--source", str(source), "--out", str(tmp_path / "offline")]) == 0
    live_out = tmp_path / "live"
    extra = ["--fhir-url", base, "--patients", pid, "--write-back"]
    assert main([*command, *extra, "--out", str(live_out)]) == 0
    for trial in ("relieve", "ssrs"):
        offline_lines = read_ndjson(tmp_path / "offline" / trial / "verdicts.ndjson")
        assert read_ndjson(live_out / trial / "verdicts.ndjson") == offline_lines
    verdicts = {
        trial: read_ndjson(live_out / trial / "verdicts.ndjson")[0]["verdict"]
        for trial in ("relieve", "ssrs")
    }
    assert verdicts == {"relieve": "candidate", "ssrs": "candidate"}
    found = search_all(base, "ResearchSubject", {"_count": "200"})
    mine = [s for s in found if s["individual"]["reference"] == f"Patient/{pid}"]
    studies = {s["study"]["reference"] for s in mine}
    assert len(mine) == 2 and len(studies) == 2  # one subject per ResearchStudy
    assert {s["status"] for s in mine} == {"candidate"}


def test_a_type_the_server_refuses_is_never_an_exclusion(
    fhir_server: Any, patients: LoadedPatients, tmp_path: Path
) -> None:
    """A server in front of the real one refuses ServiceRequest searches (400) and batches: the
    run goes on without them, reports the lost type, and no criterion rests on its absence."""
    expected = offline(patients.write_ndjson(tmp_path / "ndjson"), tmp_path / "offline")
    proxy = RefusingProxy(fhir_server.base_url, refuse={"ServiceRequest"})
    try:
        ids = ",".join(patients.patient_ids)
        assert live(proxy.url, tmp_path / "live", "--patients", ids) == 1
    finally:
        proxy.close()
    assert any("ServiceRequest" in path for path in proxy.refused)
    got = {v["patient"]: v for v in read_ndjson(tmp_path / "live" / "verdicts.ndjson")}
    assert set(got) == set(expected)
    for patient, verdict in got.items():
        if verdict["verdict"] == "ineligible":
            assert expected[patient]["verdict"] == "ineligible", patient
    candidate = next(pid for pid, t in patients.tests.items() if t.id == "candidate")
    mine = got[f"Patient/{candidate}"]
    assert expected[f"Patient/{candidate}"]["verdict"] == "candidate"
    assert mine["verdict"] == "potential-candidate"
    assert "ServiceRequest records are not available" in mine["criteria"]["treatment"]["reason"]
    issues = read_ndjson(tmp_path / "live" / "issues.ndjson")
    assert [i["kind"] for i in issues if "ServiceRequest" in i["message"]] == ["source-unavailable"]


def test_a_portfolio_reads_the_server_once_for_all_its_trials(
    fhir_server: Any, tmp_path: Path
) -> None:
    """Two trials on one reading: fewer requests than the two trials one after the other, and
    each trial's files the same as its own run's."""
    base = fhir_server.base_url
    patients = []
    for index in range(3):
        pid = f"once{index}x{int(time.time() * 1000) % 10_000_000}"
        patients.append(pid)
        for resource in both_trials_patient(pid):
            url = f"{base}/{resource['resourceType']}/{resource['id']}"
            assert fhir_put(url, json=resource).status_code in (200, 201)
    command = ["screen", "--as-of", "2026-06-15", "--no-progress", "--fhir-url", base]
    command += ["--patients", ",".join(patients)]
    runs = {}
    for trials in ("relieve,ssrs", "relieve", "ssrs"):
        out = tmp_path / trials.replace(",", "-")
        assert main([*command, "--trial", trials, "--out", str(out)]) == 0
        runs[trials] = out
    portfolio = json.loads((runs["relieve,ssrs"] / "summary.json").read_text())["live"]
    alone = {
        trial: json.loads((runs[trial] / "summary.json").read_text())["live"]["requests"]
        for trial in ("relieve", "ssrs")
    }
    assert portfolio["screened_patients"] == len(patients)
    assert portfolio["requests"] < alone["relieve"] + alone["ssrs"]
    for trial in ("relieve", "ssrs"):
        for name in ("verdicts.ndjson", "ResearchSubject.ndjson", "issues.ndjson"):
            together = (runs["relieve,ssrs"] / trial / name).read_bytes()
            assert together == (runs[trial] / name).read_bytes(), (trial, name)
