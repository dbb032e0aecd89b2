"""Integration fixtures: real FHIR servers, started once per session on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from service.fhir.client import FhirClient
from service.fhir.loader import load_resources
from service.screening.ruletests import RuleTest, export_patients, read_test_file
from tests.conftest import RULES_DIR
from tests.integration.servers import HapiServer, SekmetServer

SERVERS = ["sekmet", "hapi"]
_prefixes = itertools.count()


@pytest.fixture(scope="session", params=SERVERS)
def fhir_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    harnesses = {"sekmet": SekmetServer, "hapi": HapiServer}
    server = harnesses[request.param](tmp_path_factory.mktemp(request.param)).start()
    print(f"\n{server.name} up on {server.base_url} after {server.startup_seconds:.1f}s")
    try:
        yield server
    finally:
        server.stop()


JSON_HEADERS = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}


def fhir_get(url: str, **kwargs: Any) -> httpx.Response:
    """A plain GET asking for JSON (HAPI answers XML to a request that does not say)."""
    return httpx.get(url, headers=JSON_HEADERS, **{"timeout": 120.0, **kwargs})


def fhir_put(url: str, json: Any, **_ignored: Any) -> httpx.Response:
    return httpx.put(url, json=json, headers=JSON_HEADERS, timeout=120.0)


def search_all(base_url: str, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
    """Every resource of a search, following next links (servers cap the page size)."""
    found: list[dict[str, Any]] = []
    url: str | None = f"{base_url}/{resource_type}"
    query: dict[str, str] | None = params
    while url:
        page = fhir_get(url, params=query).json()
        found += [e["resource"] for e in page.get("entry", [])]
        url = next((lk["url"] for lk in page.get("link", []) if lk["relation"] == "next"), None)
        query = None
    return found


class LoadedPatients:
    """The RELIEVE rule-test patients, loaded under a prefix unique to one test."""

    def __init__(self, base_url: str, prefix: str, auth: httpx.Auth | None = None) -> None:
        suite = read_test_file(RULES_DIR / "relieve.tests.yaml")
        self.tests: dict[str, RuleTest] = {}
        self.resources: list[dict[str, Any]] = []
        for test, patient_id, resources in export_patients(suite, prefix):
            if test.expect.input_issues:
                continue  # deliberately broken data: a server may refuse it
            if len({(r["resourceType"], r["id"]) for r in resources}) != len(resources):
                continue  # several copies of one resource: a server keeps only one version
            self.tests[patient_id] = test
            self.resources.extend(resources)
        self.base_url = base_url
        self.auth = auth
        asyncio.run(self._load())

    async def _load(self) -> None:
        # A loaded machine can make a server take long over a transaction: generous timeout.
        async with FhirClient(self.base_url, auth=self.auth, timeout=180.0) as client:
            await load_resources(client, self.resources)

    @property
    def patient_ids(self) -> list[str]:
        return sorted(self.tests)

    def write_ndjson(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        by_type: dict[str, list[bytes]] = {}
        for resource in self.resources:
            by_type.setdefault(resource["resourceType"], []).append(orjson.dumps(resource))
        for rtype, lines in by_type.items():
            (folder / f"{rtype}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
        return folder


@pytest.fixture
def patients(fhir_server: Any) -> LoadedPatients:
    return LoadedPatients(fhir_server.base_url, f"i{next(_prefixes)}x")
