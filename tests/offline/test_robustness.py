"""Messy input never stops a run: mutated populations, random lines, failures inside a run."""

from __future__ import annotations

import gzip
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.ndjson_files import NdjsonFile
from service.ruleset.evaluate import Evaluator
from service.ruleset.loader import RuleSet
from service.screening import run
from service.screening.ndjson import NdjsonReader
from service.screening.source import Collector, InputIssue, IssueLog
from tests.conftest import SAMPLE_DIR
from tests.helpers import AS_OF, read_ndjson, screen_cli

_PATIENT_REF = re.compile(rb'"Patient/([^"/]+)"')
_NUMBER = re.compile(rb'("value(?:Integer)?"\s*:\s*)(-?\d+(?:\.\d+)?)')


def owner(line: bytes) -> str | None:
    """The patient a sample line belongs to (its subject, or its own id for a Patient)."""
    found = _PATIENT_REF.search(line)
    if found:
        return found.group(1).decode()
    own = re.search(rb'"resourceType"\s*:\s*"Patient"\s*,\s*"id"\s*:\s*"([^"]+)"', line)
    return own.group(1).decode() if own else None


def mutate(line: bytes, rng: random.Random) -> bytes:
    """One kind of damage real exports show, chosen at random."""
    kind = rng.randrange(7)
    if kind == 0:  # cut short
        return line[: rng.randrange(1, max(2, len(line) - 1))]
    if kind == 1:  # random bytes, no line break
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))).replace(b"\n", b"")
    if kind == 2:  # numbers too large for a double, or for any integer type
        huge = rng.choice([b"1e400", b"123456789012345678901234567890", b"-1e999"])
        return _NUMBER.sub(lambda m: m.group(1) + huge, line) if _NUMBER.search(line) else huge
    if kind == 3:  # deep nesting inside a resource
        depth = rng.choice([50, 600, 3000])
        return line[:-1] + b',"extension":' + b"[" * depth + b"]" * depth + b"}"
    if kind == 4:  # wrong JSON types where FHIR wants objects or strings
        return line.replace(b'"subject":{', b'"subject":[{', 1).replace(b"}}", b"}]}", 1)
    if kind == 5:
        return re.sub(rb'"(code|system|effectiveDateTime|birthDate)":"[^"]*"', rb'"\1":17', line)
    return re.sub(rb'"(coding|component|bodySite)":\[', rb'"\1":{"x":[', line, count=1)


def test_a_mutated_population_never_crashes_and_spares_untouched_patients(
    tmp_path: Path,
) -> None:
    rng = random.Random(20261128)
    source = tmp_path / "mutated"
    source.mkdir()
    touched: set[str] = set()
    for path in sorted(SAMPLE_DIR.glob("*.ndjson")):
        lines = path.read_bytes().splitlines()
        for index in rng.sample(range(len(lines)), k=max(1, len(lines) // 25)):
            patient = owner(lines[index])
            if patient is not None:
                touched.add(patient)
            lines[index] = mutate(lines[index], rng)
        (source / path.name).write_bytes(b"\n".join(lines) + b"\n")
    # A corrupt gzip file whose readable part repeats lines already there: nobody changes.
    packed = gzip.compress(SAMPLE_DIR.joinpath("Condition.ndjson").read_bytes())
    (source / "Condition.extra.ndjson.gz").write_bytes(packed[: len(packed) // 2])

    baseline = tmp_path / "baseline"
    assert screen_cli("--source", str(SAMPLE_DIR), baseline) == 0
    out = tmp_path / "out"
    command = [sys.executable, "-m", "service", "screen", "--trial", "relieve"]
    command += ["--source", str(source), "--as-of", AS_OF, "--out", str(out), "--no-progress"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)

    assert finished.returncode in (0, 1, 2), finished.stdout + finished.stderr
    assert "Traceback" not in finished.stdout + finished.stderr
    assert finished.returncode == 1  # the damage is reported
    kinds = {issue["kind"] for issue in read_ndjson(out / "issues.ndjson")}
    assert {"malformed-json", "unreadable-file"} <= kinds
    before = {v["patient"]: v for v in read_ndjson(baseline / "verdicts.ndjson")}
    after = {v["patient"]: v for v in read_ndjson(out / "verdicts.ndjson")}
    untouched = {p for p in before if p.removeprefix("Patient/") not in touched}
    assert len(untouched) > 100
    assert {p: after.get(p) for p in untouched} == {p: before[p] for p in untouched}


# Lines a reader may meet: JSON of any shape, resource-like objects with values of wrong types,
# and raw bytes.
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
_field_names = st.sampled_from(
    [
        "id",
        "subject",
        "code",
        "status",
        "valueInteger",
        "valueQuantity",
        "component",
        "effectiveDateTime",
        "birthDate",
        "meta",
        "bodySite",
        "medicationReference",
        "contained",
    ]
)
_resource = st.builds(
    lambda rtype, fields: {"resourceType": rtype, **fields},
    st.sampled_from(
        [
            "Patient",
            "Condition",
            "Observation",
            "Procedure",
            "MedicationRequest",
            "Medication",
            "ServiceRequest",
            "Unknown",
        ]
    ),
    st.dictionaries(_field_names, _json, max_size=6),
)
_line = st.one_of(
    _resource.map(lambda r: json.dumps(r).encode()),
    _json.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=120).map(lambda b: b.replace(b"\n", b"")),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_line, max_size=12), st.sampled_from(["Observation", "Condition", "Patient"]))
def test_no_line_can_raise_out_of_the_reader(
    relieve: RuleSet, lines: list[bytes], resource_type: str
) -> None:
    issues: list[InputIssue] = []
    collector = Collector(
        relieve.mapper, __import__("datetime").date(2026, 6, 15), IssueLog(sink=issues.append)
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{resource_type}.ndjson"
        path.write_bytes(b"\n".join(lines) + b"\n")
        NdjsonReader([collector]).read_files([NdjsonFile(path, resource_type)])
    evaluator = Evaluator(relieve)
    for patient_id, _patient, facts in collector.screened_patients():
        verdict = evaluator.evaluate_safely(
            patient_id, facts, __import__("datetime").date(2026, 6, 15)
        )
        assert {c.result for c in verdict.criteria} <= {"met", "not_met", "unknown"}
    assert all(issue.line >= 0 and issue.kind for issue in issues)


def test_an_error_evaluating_one_patient_costs_only_that_patient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Evaluator.evaluate

    def failing(self: Evaluator, patient_id: str, facts: dict[str, Any], as_of: Any) -> Any:
        if patient_id == "p0000000":
            raise RuntimeError("boom")
        return real(self, patient_id, facts, as_of)

    monkeypatch.setattr(Evaluator, "evaluate", failing)
    assert screen_cli("--source", str(SAMPLE_DIR), tmp_path) == 1
    verdicts = {v["patient"]: v for v in read_ndjson(tmp_path / "verdicts.ndjson")}
    assert len(verdicts) == 300
    failed = verdicts["Patient/p0000000"]
    decidable = {
        cid: c for cid, c in failed["criteria"].items() if cid not in ("index-site", "consent")
    }
    assert {c["result"] for c in decidable.values()} == {"unknown"}
    assert all("could not be evaluated" in c["reason"] for c in decidable.values())
    issues = read_ndjson(tmp_path / "issues.ndjson")
    assert {i["kind"] for i in issues} == {"evaluation-error"}
    assert {i["file"] for i in issues} == {"Patient/p0000000"}


def test_a_run_stopped_by_an_internal_error_leaves_the_previous_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert screen_cli("--source", str(SAMPLE_DIR), tmp_path) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(run, "ResultFiles", broken)  # the verdict files fail to open
    assert screen_cli("--source", str(SAMPLE_DIR), tmp_path) == 3
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # no half-written or mixed files, no temporaries left behind


def test_a_datetime_at_plus_fourteen_and_a_leap_second_run_clean(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(SAMPLE_DIR, source)
    patient = {"resourceType": "Patient", "id": "z1", "birthDate": "1950-01-01"}
    conditions = [
        {
            "resourceType": "Condition",
            "id": "z1-c",
            "subject": {"reference": "Patient/z1"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "94602001"}]},
            "onsetDateTime": "2016-12-31T23:59:60Z",
            "recordedDate": "2026-05-25T09:30:00+14:00",
        },
    ]
    with (source / "Patient.ndjson").open("a") as handle:
        handle.write(json.dumps(patient) + "\n")
    with (source / "Condition.ndjson").open("a") as handle:
        handle.writelines(json.dumps(c) + "\n" for c in conditions)
    out = tmp_path / "out"
    assert screen_cli("--source", str(source), out) == 0
    verdict = next(v for v in read_ndjson(out / "verdicts.ndjson") if v["patient"] == "Patient/z1")
    assert verdict["criteria"]["spinal-metastasis"]["result"] == "met"
