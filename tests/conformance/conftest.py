"""Conformance fixtures: the HAPI FHIR instance validator, and a fresh sekmet-fhir per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.validator import InstanceValidator
from tests.integration.conftest import LoadedPatients
from tests.integration.servers import SekmetServer

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def fhir_validator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstanceValidator]:
    validator = InstanceValidator(tmp_path_factory.mktemp("validator"))
    try:
        validator.start()
        print(f"\nFHIR validator ready after {validator.startup_seconds:.1f}s")
        yield validator
    finally:
        validator.stop()


@pytest.fixture
def fresh_sekmet(tmp_path: Path) -> Iterator[SekmetServer]:
    """A server of its own: no ResearchStudy and no CodeSystem of an earlier test on it."""
    server = SekmetServer(tmp_path / "sekmet")
    try:
        yield server.start()
    finally:
        server.stop()  # also when start() failed half-way


@pytest.fixture
def loaded(fresh_sekmet: SekmetServer) -> LoadedPatients:
    return LoadedPatients(fresh_sekmet.base_url, f"c{next(_prefixes)}x")
