"""The feasibility report's FHIR MeasureReport passes the HAPI FHIR instance validator with no
error: counts shown, counts hidden (data-absent-reason ``masked``), criterion populations coded
in the trials' published criteria CodeSystems and the others in the feasibility one."""

from __future__ import annotations

import json
from pathlib import Path

from service.cli import main
from tests.conformance.validator import REPO, InstanceValidator, errors_of
from tests.helpers import AS_OF


def test_the_feasibility_measure_report_is_valid(
    fhir_validator: InstanceValidator, tmp_path: Path
) -> None:
    out = tmp_path / "feasibility"
    command = [
        "feasibility",
        "--trial",
        "relieve,ssrs",
        "--source",
        str(REPO / "samples" / "hospital"),
    ]
    command += ["--from", "2025-07-01", "--to", AS_OF, "--out", str(out), "--no-progress"]
    assert main(command) == 0
    report = json.loads((out / "MeasureReport.json").read_text())
    assert report["resourceType"] == "MeasureReport" and report["type"] == "summary"
    assert [group["id"] for group in report["group"]] == ["relieve", "ssrs"]
    relieve = report["group"][0]
    assert len(relieve["population"]) == 15  # screened, 13 criteria, candidates
    strata = relieve["stratifier"][0]["stratum"]
    assert len(strata) == 12
    masked = [s for s in strata if "_count" in s["population"][0]]
    assert masked, "the sample has months with fewer than 5 new candidates"
    (result,) = fhir_validator.validate_file(out / "MeasureReport.json")
    assert result.resource_type == "MeasureReport"
    assert errors_of([result]) == ""


def test_a_population_code_outside_the_published_code_system_is_an_error(
    fhir_validator: InstanceValidator, tmp_path: Path
) -> None:
    """The feasibility CodeSystem is loaded into the validator: a code it lacks is caught."""
    out = tmp_path / "feasibility"
    command = ["feasibility", "--trial", "relieve", "--source", str(REPO / "samples" / "hospital")]
    command += ["--from", "2026-05-01", "--to", AS_OF, "--out", str(out), "--no-progress"]
    assert main(command) == 0
    report = json.loads((out / "MeasureReport.json").read_text())
    report["group"][0]["population"][-1]["code"]["coding"][0]["code"] = "shoe-size"
    (result,) = fhir_validator.validate([report], "measure-report-unknown-code")
    assert "shoe-size" in errors_of([result])
