"""The Bulk Data client's own readers of the downloaded files keep the one line-length limit:
the error files (OperationOutcomes) and the scan for referenced ids (N12)."""

from __future__ import annotations

import json
from pathlib import Path

from service.fhir.bulk.export import read_errors
from service.fhir.bulk.job import ExportFile, ExportJob, ExportState
from service.fhir.bulk.plan import ExportRequest
from service.fhir.bulk.references import wanted_references
from service.ruleset.loader import RuleSet

LIMIT = 4 << 20


def outcome(code: str) -> bytes:
    issue = {"severity": "error", "code": code, "diagnostics": "x"}
    return json.dumps({"resourceType": "OperationOutcome", "issue": [issue]}).encode()


def test_a_line_too_long_in_an_error_file_is_an_entry_never_read(tmp_path: Path) -> None:
    job = ExportJob(ExportRequest("patient"))
    error = ExportFile("error", "OperationOutcome", 1, done=True)
    job.files.append(error)
    path = tmp_path / error.name
    path.parent.mkdir(parents=True)
    huge = b'{"resourceType":"OperationOutcome","x":"' + b"y" * LIMIT + b'"}'
    path.write_bytes(b"\n".join([outcome("not-found"), huge, outcome("too-costly")]) + b"\n")
    entries = read_errors(tmp_path, job, LIMIT)
    assert [(e.line, e.code) for e in entries] == [
        (1, "not-found"),
        (2, "line-too-long"),
        (3, "too-costly"),
    ]


def test_the_reference_scan_skips_a_line_too_long(tmp_path: Path, relieve: RuleSet) -> None:
    """A MedicationRequest too long to read names no Medication to fetch; the others do."""
    job = ExportJob(ExportRequest("patient"))
    requests = ExportFile("output", "MedicationRequest", 1, done=True)
    job.files.append(requests)
    state = ExportState(tmp_path, "http://fhir.example", [job])

    def request(rid: str, medication: str, pad: int = 0) -> bytes:
        resource = {
            "resourceType": "MedicationRequest",
            "id": rid,
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/p"},
            "medicationReference": {"reference": f"Medication/{medication}"},
            "note": [{"text": "z" * pad}],
        }
        return json.dumps(resource).encode()

    lines = [request("a", "m1"), request("b", "m2", LIMIT), request("c", "m3")]
    (tmp_path / requests.name).write_bytes(b"\n".join(lines) + b"\n")
    wanted = wanted_references(tmp_path, state, job, [relieve.mapper], LIMIT)
    assert wanted == {"Medication": {"m1", "m3"}}
