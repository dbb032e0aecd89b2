"""Against an EHR that allows patient-scoped queries only (HAPI FHIR in its constrained mode,
holding the sample hospital and its clinic schedule): cohort discovery is refused with a clear
message; a clinic's appointments are the patient list, and give the offline verdicts."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from service.cli import main
from tests.conftest import SAMPLE_DIR
from tests.helpers import read_ndjson
from tests.integration.conftest import fhir_put

pytestmark = pytest.mark.integration
AS_OF = "2026-06-15"
TRIALS = ("relieve", "ssrs")
IGNORED = {"cancelled", "noshow", "entered-in-error"}


def screen(*extra: str) -> int:
    return main(["screen", "--as-of", AS_OF, "--no-progress", *extra])


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The sample hospital's verdicts, offline, by trial and patient."""
    out = tmp_path_factory.mktemp("offline")
    assert screen("--trial", ",".join(TRIALS), "--source", str(SAMPLE_DIR), "--out", str(out)) == 0
    return {
        trial: {v["patient"]: v for v in read_ndjson(out / trial / "verdicts.ndjson")}
        for trial in TRIALS
    }


def appointments() -> list[dict[str, Any]]:
    return read_ndjson(SAMPLE_DIR / "Appointment.ndjson")


def booked_patients(first: str, last: str, practitioner: str | None = None) -> set[str]:
    """The patients the sample's schedule has coming on these days (read here, independently
    of prescreen): a kept status, a start on one of the days, the practitioner if given."""
    found = set()
    for appointment in appointments():
        actors = [p["actor"]["reference"] for p in appointment["participant"]]
        if appointment["status"] in IGNORED or not first <= appointment["start"][:10] <= last:
            continue
        if practitioner is not None and practitioner not in actors:
            continue
        found |= {a for a in actors if a.startswith("Patient/")}
    return found


def test_cohort_discovery_is_refused_with_a_clear_message(
    constrained_hapi: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    base = constrained_hapi.base_url
    for extra in ([], ["--since", "2026-01-01T00:00:00Z"]):
        out = tmp_path / f"run{len(extra)}"
        assert screen("--trial", "relieve", "--fhir-url", base, "--out", str(out), *extra) == 2
        said = " ".join(capfd.readouterr().err.split())
        assert "refused a search across patients" in said
        assert "patient-scoped queries only" in said
        for option in ("--patients", "--group", "--appointments"):
            assert option in said
        # Nothing claims a cohort: no verdicts, no summary.
        assert not (out / "verdicts.ndjson").exists()
        assert not (out / "summary.json").exists()


def test_patient_ids_are_read_one_patient_at_a_time_with_the_offline_verdicts(
    constrained_hapi: Any, offline: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    chosen = sorted(offline["relieve"])[:30:3]
    ids = ",".join(p.removeprefix("Patient/") for p in chosen)
    out = tmp_path / "ids"
    assert screen("--trial", "relieve", "--fhir-url", constrained_hapi.base_url,
                  "--patients", ids, "--out", str(out)) == 0  # fmt: skip
    got = {v["patient"]: v for v in read_ndjson(out / "verdicts.ndjson")}
    assert got == {p: offline["relieve"][p] for p in chosen}
    live = json.loads((out / "summary.json").read_text())["live"]
    assert len(live["server_notices"]) == 1  # said once
    assert "one patient at a time" in live["server_notices"][0]


def test_a_clinic_list_gives_the_offline_verdicts_of_its_patients(
    constrained_hapi: Any, offline: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    out = tmp_path / "clinic"
    command = ["--trial", ",".join(TRIALS), "--fhir-url", constrained_hapi.base_url]
    assert screen(*command, "--appointments", "2026-06-16..2026-06-18", "--out", str(out)) == 0
    expected = booked_patients("2026-06-16", "2026-06-18")
    assert len(expected) > 20
    for trial in TRIALS:
        got = {v["patient"]: v for v in read_ndjson(out / trial / "verdicts.ndjson")}
        assert set(got) == expected
        assert got == {p: offline[trial][p] for p in expected}
    selection = json.loads((out / "relieve" / "summary.json").read_text())["live"]["selection"]
    in_days = [a for a in appointments() if "2026-06-16" <= a["start"][:10] <= "2026-06-18"]
    assert selection["kind"] == "appointments"
    assert selection["days"] == {"first": "2026-06-16", "last": "2026-06-18", "zone": "UTC"}
    assert selection["appointments_read"] == len(in_days)
    ignored = sum(selection["appointments_ignored"].values())
    assert ignored == sum(1 for a in in_days if a["status"] in IGNORED) > 0
    assert selection["patients"] == len(expected)


def test_a_patient_whose_only_appointment_is_cancelled_is_not_screened(
    constrained_hapi: Any, tmp_path: Path
) -> None:
    statuses: dict[str, set[str]] = {}
    for appointment in appointments():
        patient = appointment["participant"][0]["actor"]["reference"]
        statuses.setdefault(patient, set()).add(appointment["status"])
    cancelled_only = [p for p, s in statuses.items() if s == {"cancelled"}]
    assert cancelled_only
    out = tmp_path / "week"
    command = ["--trial", "relieve", "--fhir-url", constrained_hapi.base_url]
    assert screen(*command, "--appointments", "2026-06-16..2026-06-20", "--out", str(out)) == 0
    screened = {v["patient"] for v in read_ndjson(out / "verdicts.ndjson")}
    assert screened == booked_patients("2026-06-16", "2026-06-20")
    assert not screened & set(cancelled_only)


def test_an_appointment_filter_narrows_the_clinic_list(
    constrained_hapi: Any, tmp_path: Path
) -> None:
    out = tmp_path / "spine"
    command = ["--trial", "relieve", "--fhir-url", constrained_hapi.base_url]
    spine = "Practitioner/spine-onc-1"
    extra = ["--appointments", "2026-06-16..2026-06-20", "--appointment-filter",
             f"practitioner={spine}"]  # fmt: skip
    assert screen(*command, *extra, "--out", str(out)) == 0
    screened = {v["patient"] for v in read_ndjson(out / "verdicts.ndjson")}
    expected = booked_patients("2026-06-16", "2026-06-20", spine)
    assert screened == expected and expected < booked_patients("2026-06-16", "2026-06-20")
    selection = json.loads((out / "summary.json").read_text())["live"]["selection"]
    assert selection["filters"] == [f"practitioner={spine}"]


def test_a_group_is_screened_member_by_member(
    constrained_hapi: Any, offline: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    members = sorted(offline["relieve"])[5:8]
    group_id = f"clinic-{uuid.uuid4().hex[:12]}"
    group = {
        "resourceType": "Group",
        "id": group_id,
        "type": "person",
        "actual": True,
        "member": [
            {"entity": {"reference": members[0]}},
            {"entity": {"reference": members[1]}},
            {"entity": {"reference": members[2]}, "inactive": True},  # no longer a member
            {"entity": {"reference": "Practitioner/spine-onc-1"}},
        ],
    }
    answer = fhir_put(f"{constrained_hapi.base_url}/Group/{group_id}", json=group)
    assert answer.status_code in (200, 201)
    out = tmp_path / "group"
    command = ["--trial", "relieve", "--fhir-url", constrained_hapi.base_url]
    assert screen(*command, "--group", group_id, "--out", str(out)) == 0
    got = {v["patient"]: v for v in read_ndjson(out / "verdicts.ndjson")}
    assert got == {p: offline["relieve"][p] for p in members[:2]}
    selection = json.loads((out / "summary.json").read_text())["live"]["selection"]
    assert selection == {"kind": "group", "group": group_id}


def test_a_patient_level_export_refused_names_the_group_option(
    constrained_hapi: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bulk"
    command = ["--trial", "relieve", "--fhir-url", constrained_hapi.base_url, "--bulk"]
    assert screen(*command, "--out", str(out)) == 2
    said = " ".join(capfd.readouterr().err.split())
    assert "refused Patient/$export" in said and "--group" in said
    assert not (out / "verdicts.ndjson").exists()
