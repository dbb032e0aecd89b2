"""Shared fixtures: the shipped RELIEVE rule set, loaded once."""

from __future__ import annotations

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
    """Start-up time and memory of the FHIR servers the integration suite started."""
    from tests.integration.servers import STARTUP_REPORT

    if STARTUP_REPORT:
        terminalreporter.section("FHIR servers")
        for line in STARTUP_REPORT:
            terminalreporter.write_line(line)
