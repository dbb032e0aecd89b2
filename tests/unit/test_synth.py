"""The synthetic hospital: deterministic by seed, and carrying what both trials read."""

from __future__ import annotations

import json
import shlex
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

from service.ruleset.loader import RuleSet
from service.synth import LEVELS, MRN_SYSTEM, REGIONS, generate, write_population
from service.synth_clinic import clinic_schedule
from tests.conftest import SAMPLE_DIR

AS_OF = date(2026, 6, 15)


def _population(patients: int = 200, seed: int = 3) -> list[dict[str, Any]]:
    return list(generate(patients, seed, AS_OF, spinal_fraction=0.25, median_background=4))


def _codes(concept: dict[str, Any]) -> set[str]:
    return {coding["code"] for coding in concept.get("coding", [])}


def test_same_seed_writes_identical_files(tmp_path: Path) -> None:
    options: dict[str, Any] = {"spinal_fraction": 0.25, "median_background": 4}
    first = write_population(tmp_path / "a", 120, 11, AS_OF, **options)
    second = write_population(tmp_path / "b", 120, 11, AS_OF, **options)
    assert first == second
    for path in sorted((tmp_path / "a").glob("*.ndjson")):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name
    write_population(tmp_path / "c", 120, 12, AS_OF, **options)
    patients = (tmp_path / "c" / "Patient.ndjson").read_bytes()
    assert patients != (tmp_path / "a" / "Patient.ndjson").read_bytes()


def test_the_shipped_sample_is_what_its_command_generates(tmp_path: Path) -> None:
    manifest = json.loads((SAMPLE_DIR / "sample.json").read_text())
    argv = shlex.split(manifest["generated_by"])
    options = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert argv[:2] == ["prescreen", "synth"] and options["--out"] == "samples/hospital"
    write_population(
        tmp_path,
        int(options["--patients"]),
        int(options["--seed"]),
        date.fromisoformat(options["--as-of"]),
        spinal_fraction=float(options["--spinal-fraction"]),
        median_background=int(options["--median-background"]),
        clinic_days=int(options.get("--clinic-days", 0)),
    )
    shipped = sorted(path.name for path in SAMPLE_DIR.glob("*.ndjson"))
    assert shipped == sorted(path.name for path in tmp_path.glob("*.ndjson"))
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (SAMPLE_DIR / name).read_bytes(), (
            f"{name}: run `make sample`"
        )
    assert manifest["trials"] == ["relieve", "ssrs"]


def test_spinal_metastases_keep_their_region_and_gain_vertebra_levels() -> None:
    spinal = [
        r
        for r in _population()
        if r["resourceType"] == "Condition" and _codes(r["code"]) & {"94602001", "C79.51"}
    ]
    located = [c for c in spinal if "bodySite" in c]
    assert located and len(located) < len(spinal)  # some bone metastases have no site
    level_codes = set(LEVELS.values())
    with_levels = 0
    for condition in located:
        region, *levels = condition["bodySite"]
        assert _codes(region) <= set(REGIONS.values())  # what RELIEVE reads comes first
        assert all(_codes(level) <= level_codes for level in levels)
        with_levels += bool(levels)
    assert 0 < with_levels < len(located)  # some are coded by region only
    assert any(len(c["bodySite"]) > 6 for c in located)  # diffuse disease


def test_population_carries_what_ssrs_reads() -> None:
    resources = _population()
    kinds = Counter(r["resourceType"] for r in resources)
    assert kinds["DiagnosticReport"] and kinds["DocumentReference"]
    observed = Counter(
        code for r in resources if r["resourceType"] == "Observation" for code in _codes(r["code"])
    )
    for code in ("89243-0", "89247-1", "escc-grade", "2106-3"):
        assert observed[code] > 0, code
    visits = [r for r in resources if r["resourceType"] == "Encounter" and "type" in r]
    assert visits and all(v["status"] == "finished" and v["period"]["start"] for v in visits)
    mris = [
        code
        for r in resources
        if r["resourceType"] in ("DiagnosticReport", "Procedure")
        for code in _codes(r["code"])
        if code in {"24935-9", "24980-5", "24968-0", "72141", "72146", "72148"}
    ]
    assert mris
    conditions = Counter(
        code for r in resources if r["resourceType"] == "Condition" for code in _codes(r["code"])
    )
    assert conditions["G95.20"] > 0
    grades = {
        coding["code"]
        for r in resources
        if r["resourceType"] == "Observation" and "escc-grade" in _codes(r["code"])
        for coding in r["valueCodeableConcept"]["coding"]
    }
    assert grades <= {"0", "1a", "1b", "1c", "2", "3"}


def test_every_resource_belongs_to_a_patient_with_unique_ids() -> None:
    resources = _population(120, 5)
    patients = {r["id"] for r in resources if r["resourceType"] == "Patient"}
    assert len(patients) == 120
    ids = Counter((r["resourceType"], r["id"]) for r in resources)
    assert max(ids.values()) == 1
    for r in resources:
        if r["resourceType"] != "Patient":
            assert r["subject"]["reference"].removeprefix("Patient/") in patients


def test_patients_have_names_and_unique_record_numbers_the_mapping_reads(
    relieve: RuleSet,
) -> None:
    patients = [r for r in _population(300, 9) if r["resourceType"] == "Patient"]
    reader = relieve.mapper.display
    assert reader is not None
    details = [reader.read(p, MRN_SYSTEM) for p in patients]
    assert all(d.name and d.mrn and d.sex for d in details)
    assert len({d.mrn for d in details}) == len(patients)
    # Some carry an old number of the hospital taken over, listed first: never the one shown.
    old = [p for p in patients if p["identifier"][0].get("use") == "old"]
    assert old and all(reader.read(p).mrn == p["identifier"][1]["value"] for p in old)
    # The same seed, the same names and numbers.
    again = [r for r in _population(300, 9) if r["resourceType"] == "Patient"]
    assert again == patients


def test_the_clinic_schedule_is_deterministic_and_has_every_status() -> None:
    first = list(clinic_schedule(60, 4, AS_OF, 5))
    assert first == list(clinic_schedule(60, 4, AS_OF, 5))
    appointments = [r for r in first if r["resourceType"] == "Appointment"]
    assert {a["status"] for a in appointments} == {
        "booked",
        "cancelled",
        "noshow",
        "entered-in-error",
    }
    days = {a["start"][:10] for a in appointments}
    assert min(days) > AS_OF.isoformat() and max(days) <= "2026-06-20"
    by_patient: dict[str, set[str]] = {}
    for a in appointments:
        patient = a["participant"][0]["actor"]["reference"]
        by_patient.setdefault(patient, set()).add(a["status"])
    assert {"cancelled"} in by_patient.values()  # a patient whose only appointment is cancelled
    assert list(clinic_schedule(60, 4, AS_OF, 0)) == []


def test_the_clinic_schedule_leaves_the_clinical_records_as_they_were(tmp_path: Path) -> None:
    write_population(tmp_path / "a", 80, 9, AS_OF, median_background=4)
    write_population(tmp_path / "b", 80, 9, AS_OF, median_background=4, clinic_days=3)
    for path in sorted((tmp_path / "a").glob("*.ndjson")):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name
    assert (tmp_path / "b" / "Appointment.ndjson").is_file()
