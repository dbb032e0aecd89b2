"""The offline runner end to end, through the CLI, against the output contract."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.researchstudy import ResearchStudy
from fhir.resources.R4B.researchsubject import ResearchSubject

from service import catalog
from service.cli import main
from service.ruleset.loader import RuleSet
from service.settings import get_settings
from tests.conftest import SAMPLE_DIR
from tests.helpers import AS_OF, read_ndjson, screen_cli

CRITERIA = [
    "alive",
    "age",
    "spinal-metastasis",
    "index-site",
    "pain-type",
    "pain-nrs",
    "treatment",
    "consent",
    "survival",
    "multiple-sites",
    "confounding-pain",
    "augmentation-only",
    "systemic-only",
]


def screen(source: Path, out: Path, *extra: str) -> int:
    return screen_cli("--source", str(source), out, *extra)


@pytest.fixture(scope="module")
def sample_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    assert screen(SAMPLE_DIR, out) == 0
    return out


def test_verdicts_follow_the_contract(sample_out: Path) -> None:
    verdicts = read_ndjson(sample_out / "verdicts.ndjson")
    assert len(verdicts) == 300
    for line in verdicts:
        assert list(line) == ["patient", "trial", "as_of", "verdict", "criteria", "ruleset"]
        assert line["patient"].startswith("Patient/") and line["trial"] == "relieve"
        assert line["as_of"] == "2026-06-15" and line["ruleset"] == {
            "id": "relieve",
            "version": "1.1.0",
        }
        assert list(line["criteria"]) == CRITERIA
        for criterion in line["criteria"].values():
            assert list(criterion) == ["kind", "result", "evidence", "reason"]
            assert criterion["kind"] in ("inclusion", "exclusion")
            assert criterion["result"] in ("met", "not_met", "unknown")
            assert all(isinstance(e, str) and "/" in e for e in criterion["evidence"])
            assert criterion["reason"]
    assert {v["verdict"] for v in verdicts} == {"candidate", "potential-candidate", "ineligible"}
    assert [v["patient"] for v in verdicts] == sorted(v["patient"] for v in verdicts)


def test_research_subjects_for_candidates_only(sample_out: Path) -> None:
    verdicts = {v["patient"]: v["verdict"] for v in read_ndjson(sample_out / "verdicts.ndjson")}
    subjects = read_ndjson(sample_out / "ResearchSubject.ndjson")
    (study,) = read_ndjson(sample_out / "ResearchStudy.ndjson")
    ResearchStudy.model_validate(study)
    assert study["identifier"] == [
        {"system": "https://clinicaltrials.gov/nctid", "value": "NCT06746103"}
    ]
    expected = {p for p, v in verdicts.items() if v != "ineligible"}
    assert {s["individual"]["reference"] for s in subjects} == expected
    for subject in subjects:
        ResearchSubject.model_validate(subject)
        assert subject["status"] == verdicts[subject["individual"]["reference"]]
        assert subject["study"]["reference"] == f"ResearchStudy/{study['id']}"
        assert (
            subject["identifier"][0]["value"] == f"NCT06746103/{subject['individual']['reference']}"
        )
    assert len({s["id"] for s in subjects}) == len(subjects)


def test_a_second_run_writes_identical_files(sample_out: Path, tmp_path: Path) -> None:
    assert screen(SAMPLE_DIR, tmp_path) == 0
    for name in ("verdicts.ndjson", "ResearchSubject.ndjson", "ResearchStudy.ndjson"):
        assert (tmp_path / name).read_bytes() == (sample_out / name).read_bytes(), name


def test_celpy_engine_gives_the_same_files(sample_out: Path, tmp_path: Path) -> None:
    assert screen(SAMPLE_DIR, tmp_path, "--engine", "celpy") == 0
    assert (tmp_path / "verdicts.ndjson").read_bytes() == (
        sample_out / "verdicts.ndjson"
    ).read_bytes()


def resource_lines(*resources: dict[str, Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in resources)


def spine(cid: str, pid: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": f"Patient/{pid}"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "94602001"}]},
        **extra,
    }


def test_bad_input_is_reported_with_file_and_line_and_the_run_continues(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "Patient.ndjson").write_text(
        resource_lines({"resourceType": "Patient", "id": "a", "birthDate": "1950-01-01"})
        + '{"resourceType": "Patient", "id": "b"\n'  # line 2: truncated
        + "\n"  # blank lines are not errors
        + resource_lines(
            {"resourceType": "Patient", "id": "c", "birthDate": "19x0-01-01"}
        )  # line 4
        + "[1, 2]\n"  # line 5
        + resource_lines({"id": "d"})  # line 6: no resourceType
        + resource_lines({"resourceType": "Patiente", "id": "e"})  # line 7
    )
    (src / "Condition.1.ndjson").write_text(
        resource_lines(
            spine("c1", "a"), {**spine("c2", "a"), "subject": None}
        )  # line 2: no subject
    )
    (src / "Condition.2.ndjson").write_text(resource_lines(spine("c1", "a"), spine("c3", "c")))
    (src / "Observation.ndjson").write_text(
        '{"resourceType":"Observation","code":{"coding":[{"code":"848\n'  # irrelevant, cut
        + '{"resourceType":"Observation","code":{"coding":[{"code":"72514-3"}]\n'  # relevant, cut
    )
    (src / "Widget.ndjson").write_text('{"resourceType": "Widget"}\n')
    (src / "notes.txt").write_text("not an ndjson file, ignored")

    assert screen(src, out) == 1
    issues = {(i["file"], i["line"], i["kind"]) for i in read_ndjson(out / "issues.ndjson")}
    assert issues == {
        ("Patient.ndjson", 2, "malformed-json"),
        ("Patient.ndjson", 4, "bad-value"),
        ("Patient.ndjson", 5, "not-a-resource"),
        ("Patient.ndjson", 6, "no-resource-type"),
        ("Patient.ndjson", 7, "unknown-resource-type"),
        ("Condition.1.ndjson", 2, "unattributable"),
        ("Observation.ndjson", 1, "malformed-json"),
        ("Observation.ndjson", 2, "malformed-json"),
        ("Widget.ndjson", 0, "unknown-resource-type"),
    }
    verdicts = {v["patient"]: v for v in read_ndjson(out / "verdicts.ndjson")}
    assert set(verdicts) == {"Patient/a", "Patient/c"}
    # The same Condition exported in two files is one piece of evidence.
    assert verdicts["Patient/a"]["criteria"]["spinal-metastasis"]["evidence"] == ["Condition/c1"]
    assert verdicts["Patient/c"]["criteria"]["age"]["result"] == "unknown"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["issues"]["total"] == 9 and summary["exit_code"] == 1
    printed = capsys.readouterr().out
    assert "9 input problem(s)" in printed and "Patient.ndjson:2: malformed-json" in printed
    assert "19x0" not in (out / "issues.ndjson").read_text()  # no patient data in the report


def test_resources_of_patients_missing_from_patient_ndjson_are_counted(tmp_path: Path) -> None:
    (tmp_path / "Patient.ndjson").write_text(resource_lines({"resourceType": "Patient", "id": "a"}))
    (tmp_path / "Condition.ndjson").write_text(resource_lines(spine("x", "ghost")))
    assert screen(tmp_path, tmp_path / "out") == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["records_without_patient"] == {"conditions": 1}


def test_gzipped_and_split_files_are_read(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "Condition.000.ndjson.gz", "wt") as handle:
        handle.write(resource_lines(spine("c1", "a")))
    (tmp_path / "Patient.ndjson").write_text(resource_lines({"resourceType": "Patient", "id": "a"}))
    assert screen(tmp_path, tmp_path / "out") == 0
    (verdict,) = read_ndjson(tmp_path / "out" / "verdicts.ndjson")
    assert verdict["criteria"]["spinal-metastasis"]["result"] == "met"


def test_ignored_resources_leave_nothing_in_memory(relieve: RuleSet, tmp_path: Path) -> None:
    from datetime import date

    from service.screening.ndjson import read_folder
    from service.screening.source import Collector, IssueLog

    (tmp_path / "Encounter.ndjson").write_text(
        resource_lines(
            *(
                {
                    "resourceType": "Encounter",
                    "id": str(i),
                    "subject": {"reference": f"Patient/{i}"},
                }
                for i in range(500)
            )
        )
    )
    (tmp_path / "Observation.ndjson").write_text(
        resource_lines(
            *(
                {
                    "resourceType": "Observation",
                    "id": str(i),
                    "status": "final",
                    "subject": {"reference": f"Patient/{i}"},
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                }
                for i in range(500)
            )
        )
    )
    collector = Collector(relieve.mapper, date(2026, 6, 15), IssueLog())
    read_folder(collector, tmp_path)
    assert collector.patients == {} and collector.stats.records == 0
    assert collector.stats.parsed == 0  # neither file needed a full parse
    assert collector.stats.skipped_type == 500 and collector.stats.skipped_prefilter == 500


def test_missing_folder_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert screen(tmp_path / "nope", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err


def test_unknown_trial_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["screen", "--trial", "nope", "--source", str(SAMPLE_DIR), "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "unknown trial 'nope'" in err and "available: relieve" in err


def test_demo_screens_the_shipped_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README's first command: it must work with a FHIR server configured, too.
    monkeypatch.setenv("PRESCREEN_FHIR_URL", "http://127.0.0.1:9/fhir")
    from service.settings import get_settings

    get_settings.cache_clear()
    try:
        assert main(["demo", "--out", str(tmp_path), "--no-progress"]) == 0
    finally:
        get_settings.cache_clear()
    # The sample names its trials: one folder each, and the overlap.
    trials = json.loads((SAMPLE_DIR / "sample.json").read_text()).get("trials", ["relieve"])
    folders = [tmp_path / trial for trial in trials] if len(trials) > 1 else [tmp_path]
    for folder in folders:
        assert len(read_ndjson(folder / "verdicts.ndjson")) == 300
    printed = capsys.readouterr().out
    assert "candidate" in printed and "Most common reasons" in printed
    if len(trials) > 1:
        assert "Patients across trials" in printed


def test_byte_order_mark_and_crlf_line_ends_are_read(tmp_path: Path) -> None:
    patient = json.dumps({"resourceType": "Patient", "id": "a", "birthDate": "1950-01-01"})
    (tmp_path / "Patient.ndjson").write_bytes(b"\xef\xbb\xbf" + patient.encode() + b"\r\n")
    condition = json.dumps(spine("c1", "a")).encode()
    (tmp_path / "Condition.ndjson").write_bytes(condition + b"\r\n" + condition + b"\r\n")
    assert screen(tmp_path, tmp_path / "out") == 0
    (verdict,) = read_ndjson(tmp_path / "out" / "verdicts.ndjson")
    assert verdict["criteria"]["age"]["result"] == "met"
    assert verdict["criteria"]["spinal-metastasis"]["evidence"] == ["Condition/c1"]


def test_a_portfolio_reads_once_and_gives_each_trial_its_single_run_files(tmp_path: Path) -> None:
    for trial in ("relieve", "ssrs"):
        command = ["screen", "--trial", trial, "--source", str(SAMPLE_DIR), "--as-of", AS_OF]
        assert main([*command, "--out", str(tmp_path / f"alone-{trial}"), "--no-progress"]) == 0
    both = tmp_path / "both"
    command = ["screen", "--trial", "relieve,ssrs", "--source", str(SAMPLE_DIR), "--as-of", AS_OF]
    assert main([*command, "--out", str(both), "--no-progress"]) == 0
    for trial in ("relieve", "ssrs"):
        for name in ("verdicts.ndjson", "ResearchSubject.ndjson", "ResearchStudy.ndjson"):
            alone = (tmp_path / f"alone-{trial}" / name).read_bytes()
            assert (both / trial / name).read_bytes() == alone, (trial, name)
    overview = json.loads((both / "summary.json").read_text())
    patients = read_ndjson(both / "patients.ndjson")
    assert (
        overview["trials"] == ["relieve", "ssrs"] and overview["patients"] == len(patients) == 300
    )
    flagged = [
        p
        for p in patients
        if sum(v in ("candidate", "potential-candidate") for v in p["verdicts"].values()) > 1
    ]
    assert overview["flagged_for_several_trials"] == len(flagged) > 0
    assert sum(c["patients"] for c in overview["combinations"]) == 300


@pytest.mark.every_trial
def test_all_screens_every_configured_trial_as_each_alone_would(tmp_path: Path) -> None:
    # "all" names every rule set in the rules folder, the shipped ones and any a hospital added.
    trials = catalog.available_trials(get_settings().rules_dir)
    assert {"relieve", "ssrs"} <= set(trials)
    every = tmp_path / "all"
    command = ["screen", "--source", str(SAMPLE_DIR), "--as-of", AS_OF, "--no-progress"]
    code = main([*command, "--trial", "all", "--out", str(every)])
    overview = json.loads((every / "summary.json").read_text())
    assert overview["trials"] == trials and overview["patients"] == 300
    codes = []
    for trial in trials:
        alone = tmp_path / f"alone-{trial}"
        codes.append(main([*command, "--trial", trial, "--out", str(alone)]))
        for name in (
            "verdicts.ndjson",
            "ResearchSubject.ndjson",
            "ResearchStudy.ndjson",
            "issues.ndjson",
        ):
            assert (every / trial / name).read_bytes() == (alone / name).read_bytes(), (trial, name)
        assert len(read_ndjson(every / trial / "verdicts.ndjson")) == 300
    # A trial's mapping may find doubtful input in the sample (exit code 1): the portfolio
    # says what its worst trial says.
    assert code == max(codes) and code in (0, 1)
    assert codes[trials.index("relieve")] == codes[trials.index("ssrs")] == 0


@pytest.mark.every_trial
def test_every_configured_trial_passes_rules_check_and_its_rule_tests(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["rules", "check"]) == 0
    for trial in catalog.available_trials(get_settings().rules_dir):
        assert main(["rules", "test", "--trial", trial]) == 0, trial
    told = capsys.readouterr().out
    assert "✗" not in told and "0 uncovered results" in told


def test_each_trial_of_a_portfolio_reports_what_it_alone_would(tmp_path: Path) -> None:
    # A code written noncanonically on a line both trials parse (a reason code is RELIEVE's):
    # RELIEVE does not take the Procedure, SSRS does. SSRS must see the code as written, and so
    # report it, whatever RELIEVE's mapping did with the same parsed resource first.
    source = tmp_path / "src"
    source.mkdir()
    (source / "Patient.ndjson").write_text(
        json.dumps({"resourceType": "Patient", "id": "p", "birthDate": "1960-03-10"}) + "\n"
    )
    hysterectomy = {
        "resourceType": "Procedure",
        "id": "h",
        "status": "completed",
        "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": " 58150"}]},
        "reasonCode": [{"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "22510"}]}],
    }
    (source / "Procedure.ndjson").write_text(json.dumps(hysterectomy) + "\n")
    command = ["screen", "--source", str(source), "--as-of", AS_OF, "--no-progress"]
    main([*command, "--trial", "relieve", "--out", str(tmp_path / "relieve")])
    assert main([*command, "--trial", "ssrs", "--out", str(tmp_path / "ssrs")]) == 1
    assert main([*command, "--trial", "relieve,ssrs", "--out", str(tmp_path / "both")]) == 1
    alone = read_ndjson(tmp_path / "ssrs" / "issues.ndjson")
    assert [i["kind"] for i in alone] == ["noncanonical-code"]
    for trial in ("relieve", "ssrs"):
        alone = read_ndjson(tmp_path / trial / "issues.ndjson")
        assert read_ndjson(tmp_path / "both" / trial / "issues.ndjson") == alone
        verdicts = (tmp_path / trial / "verdicts.ndjson").read_bytes()
        assert (tmp_path / "both" / trial / "verdicts.ndjson").read_bytes() == verdicts


@pytest.fixture
def line_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """PRESCREEN_MAX_LINE_BYTES at its minimum (4 MiB), so a test's long lines stay small."""
    from service.settings import get_settings

    limit = 4 << 20
    monkeypatch.setenv("PRESCREEN_MAX_LINE_BYTES", str(limit))
    get_settings.cache_clear()
    yield limit
    get_settings.cache_clear()


def test_a_line_too_long_is_skipped_reported_and_the_rest_screened(
    tmp_path: Path, line_limit: int
) -> None:
    """N12: a gzipped file inflating to one huge line; the line is skipped unread (input issue
    line-too-long with file and line, never its content), exit 1, every other patient
    screened exactly as without it."""
    source, plain = tmp_path / "source", tmp_path / "plain"
    shutil.copytree(SAMPLE_DIR, source)
    shutil.copytree(SAMPLE_DIR, plain)
    observations = (SAMPLE_DIR / "Observation.ndjson").read_bytes().splitlines()
    # A pain score of a patient the sample does not have, made huge by a note: valid JSON.
    huge = json.loads(next(line for line in observations if b"72514-3" in line))
    huge["id"], huge["subject"] = "huge", {"reference": "Patient/nobody"}
    huge["note"] = [{"text": "SECRET-" + "x" * (line_limit + 1000)}]
    lines = [*observations[:100], json.dumps(huge).encode(), *observations[100:]]
    (source / "Observation.ndjson").unlink()
    (source / "Observation.ndjson.gz").write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    assert screen(source, tmp_path / "out") == 1
    assert screen(plain, tmp_path / "without") == 0
    issues = read_ndjson(tmp_path / "out" / "issues.ndjson")
    assert issues == [
        {
            "file": "Observation.ndjson.gz",
            "line": 101,
            "kind": "line-too-long",
            "message": f"the line is longer than {line_limit} bytes (line end included): "
            "skipped unread",
        }
    ]
    assert (tmp_path / "out" / "verdicts.ndjson").read_bytes() == (
        tmp_path / "without" / "verdicts.ndjson"
    ).read_bytes()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    without = json.loads((tmp_path / "without" / "summary.json").read_text())
    assert summary["input"]["lines"] == without["input"]["lines"] + 1


def test_outputs_are_readable_by_their_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    """N11: before, verdicts and the rest were created 0644 (0666 with umask 0)."""
    previous = os.umask(0)
    try:
        assert screen(SAMPLE_DIR, tmp_path / "made" / "out") == 0
    finally:
        os.umask(previous)
    out = tmp_path / "made" / "out"
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    for folder in (out, out.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
