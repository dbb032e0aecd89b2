"""Shared fixtures: the shipped RELIEVE rule set, loaded once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.ruleset.loader import RuleSet, load_ruleset

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "rules"
MAPPINGS_DIR = ROOT / "fhir_mappings"
SAMPLE_DIR = ROOT / "samples" / "hospital"


@pytest.fixture(scope="session")
def relieve() -> RuleSet:
    return load_ruleset(RULES_DIR / "relieve.yaml", MAPPINGS_DIR)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Which database variants ran; start-up time and memory of the FHIR servers started."""
    from tests.integration.servers import STARTUP_REPORT

    terminalreporter.section("Databases")
    if os.environ.get("PRESCREEN_TEST_POSTGRES_URL"):
        terminalreporter.write_line("state tests ran on SQLite and on PostgreSQL")
    else:
        terminalreporter.write_line(
            "state tests ran on SQLite only: their PostgreSQL variants were not collected "
            "(PRESCREEN_TEST_POSTGRES_URL unset; `make test` starts a server when it can)"
        )

    if STARTUP_REPORT:
        terminalreporter.section("FHIR servers")
        for line in STARTUP_REPORT:
            terminalreporter.write_line(line)
