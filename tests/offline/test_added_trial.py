"""A hospital adds its own trial to its copy of prescreen: the suite's every-trial tests (those
marked ``every_trial``: ``--trial all``, the CDS Hooks cards, the published criterion codes, the
rule checks and tests of every trial) must hold with it, as they hold with the shipped two.

The trial is RTOG 0631 (NCT00922974), written from the public trial record as a hospital's
research-IT would (tests/data/trials/rtog0631/: rules, rule tests, mapping, its one new value
set and its criterion CodeSystem, in the project's layout). It is a test fixture, not a shipped
trial: this test copies the project, adds the trial to the copy and runs the selected tests
there, in a pytest of their own.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

FIXTURE = ROOT / "tests" / "data" / "trials" / "rtog0631"
PROJECT = ("service", "rules", "fhir_mappings", "terminology", "samples", "tests", "pyproject.toml")


def copy_of_the_project(into: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.pyc")
    for name in PROJECT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=ignore)
        else:
            shutil.copy2(source, into / name)
    return into


def run(project: Path, *command: str) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        # The copy's own folders, as a checkout's: no configuration pointing elsewhere.
        if key not in ("PRESCREEN_RULES_DIR", "PRESCREEN_MAPPINGS_DIR", "PRESCREEN_TRIALS")
    }
    env["PYTHONPATH"] = str(project)
    return subprocess.run(
        [sys.executable, *command],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )


def test_the_every_trial_tests_hold_with_a_third_trial_added(tmp_path: Path) -> None:
    project = copy_of_the_project(tmp_path / "prescreen")
    shutil.copytree(FIXTURE, project, dirs_exist_ok=True)  # rules/, fhir_mappings/, terminology/
    listed = run(
        project,
        "-c",
        "from service import catalog, settings; "
        "print(*catalog.available_trials(settings.get_settings().rules_dir))",
    )
    assert listed.stdout.split() == ["relieve", "rtog0631", "ssrs"], listed.stderr

    result = run(project, "-m", "pytest", "-m", "every_trial", "-p", "no:cacheprovider", "-v")
    tail = result.stdout[-6000:]
    assert result.returncode == 0, tail
    passed = re.findall(r"^(tests/\S+) PASSED", result.stdout, re.MULTILINE)
    # The selection ran, in every part of the suite, and saw the added trial.
    assert len(passed) >= 8, tail
    assert any("[rtog0631]" in test for test in passed), tail
    for module in ("test_cds_hooks", "test_screen", "test_writeback_bundles"):
        assert any(module in test for test in passed), (module, tail)
