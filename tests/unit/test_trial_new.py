"""``prescreen trial new``: a new trial that checks and tests green as written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from service.cli import main
from tests.conftest import MAPPINGS_DIR, ROOT


def project(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the shipped rules, mappings and terminology, to add trials to."""
    for folder in ("rules", "fhir_mappings", "terminology"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    return tmp_path / "rules", tmp_path / "fhir_mappings"


def test_a_new_trial_passes_rules_check_and_rules_test_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules, mappings = project(tmp_path)
    dirs = ["--rules-dir", str(rules), "--mappings-dir", str(mappings)]
    assert main(["trial", "new", "rtog-0631", "--nct", "NCT00922974", *dirs]) == 0
    told = capsys.readouterr().out
    assert "rules test: 10 tests passed" in told
    assert (rules / "rtog-0631.yaml").is_file() and (rules / "rtog-0631.tests.yaml").is_file()
    assert (mappings / "rtog-0631.yaml").is_file()
    assert (mappings / "valuesets" / "rtog-0631-diagnosis.json").is_file()
    code_system = tmp_path / "terminology" / "criteria" / "CodeSystem-criterion-rtog-0631.json"
    assert json.loads(code_system.read_text())["url"] == "urn:prescreen:criterion:rtog-0631"
    assert "NCT00922974" in (rules / "rtog-0631.yaml").read_text()
    # The commands a newcomer runs next, on every trial of the folder.
    assert main(["rules", "check", *dirs]) == 0
    assert main(["rules", "test", "--trial", "rtog-0631", *dirs]) == 0
    assert "0 uncovered results" in capsys.readouterr().out


def test_trial_new_never_overwrites_and_refuses_a_name_that_is_no_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dirs = ["--rules-dir", str(tmp_path / "rules"), "--mappings-dir", str(MAPPINGS_DIR)]
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "relieve.yaml").write_text("kept")
    assert main(["trial", "new", "relieve", *dirs]) == 2
    assert "never overwrites" in capsys.readouterr().err
    assert (tmp_path / "rules" / "relieve.yaml").read_text() == "kept"
    assert main(["trial", "new", "RTOG 0631", *dirs]) == 2
    assert "cannot name a trial" in capsys.readouterr().err
