"""Shared fixtures: the shipped RELIEVE rule set, loaded once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="session")
def constrained_hapi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """HAPI FHIR in its constrained mode (an EHR allowing patient-scoped searches and Group
    export only), holding the sample hospital with its clinic schedule. Started once per test
    session, and only when a test asks for it: the same build as the plain HAPI harness, a
    second process (the two modes never share a database, so the plain server's tests do not
    find the sample hospital's patients in their cohorts).

    PRESCREEN_TEST_CONSTRAINED_URL names one already running and loaded (while developing)."""
    import asyncio
    from types import SimpleNamespace

    import orjson

    from service.fhir.client import FhirClient
    from service.fhir.loader import load_resources
    from tests.integration.servers import HapiServer

    given = os.environ.get("PRESCREEN_TEST_CONSTRAINED_URL")
    if given:
        yield SimpleNamespace(base_url=given)
        return
    server = HapiServer(tmp_path_factory.mktemp("hapi-constrained"), constrained=True)
    server.start()
    try:
        resources = [
            orjson.loads(line)
            for path in sorted(SAMPLE_DIR.glob("*.ndjson"))
            for line in path.read_bytes().splitlines()
            if line.strip()
        ]

        async def load() -> None:
            async with FhirClient(server.base_url, timeout=300.0) as client:
                await load_resources(client, resources)

        asyncio.run(load())
        yield server
    finally:
        server.stop()
