"""Fixtures for the web worklist: per test module, one FHIR server, one OpenID Connect provider,
one service and one browser (they take seconds to start; the tests share them)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from oidc_provider_mock import User

from service.settings import Settings
from tests.integration.conftest import LoadedPatients
from tests.integration.servers import SekmetServer, free_port
from tests.ui.harness import (
    API_KEY,
    SAMPLE_AS_OF,
    add_person,
    api_keys,
    chromium_missing,
    launch_chromium,
    oidc_provider,
    running_service,
)

AXE = Path(__file__).resolve().parent / "assets" / "axe.min.js"
ROLES_CLAIM = "prescreen_roles"

# People at the identity provider. carol and dora are coordinators because `prescreen users add`
# made them so, linked to their accounts; victor is a viewer by his roles claim; nora has no
# access to prescreen at all. mallory's account claims carol's name (and a viewer role); olga
# was added before accounts were linked (by name only); rita does research; ada administers.
IDP_USERS = [
    User(sub="carol-sub", claims={"preferred_username": "carol", "name": "Carol C"}),
    User(sub="dora-sub", claims={"preferred_username": "dora", "name": "Dora D"}),
    User(sub="victor-sub", claims={"preferred_username": "victor", ROLES_CLAIM: ["viewer"]}),
    User(sub="nora-sub", claims={"preferred_username": "nora"}),
    User(sub="mallory-sub", claims={"preferred_username": "carol", ROLES_CLAIM: ["viewer"]}),
    User(sub="olga-sub", claims={"preferred_username": "olga"}),
    User(sub="rita-sub", claims={"preferred_username": "rita", ROLES_CLAIM: ["research"]}),
    User(sub="ada-sub", claims={"preferred_username": "ada", ROLES_CLAIM: ["admin"]}),
]


@dataclass
class Site:
    """The service with the web worklist in OIDC mode, and what it was given to screen."""

    url: str
    fhir_url: str
    issuer: str
    loaded: LoadedPatients
    settings: Settings

    def patient(self, test_id: str) -> str:
        return next(pid for pid, t in self.loaded.tests.items() if t.id == test_id)

    def name(self, test_id: str) -> str:
        """The name a page shows for this patient: "Family, Given"."""
        family, given, _mrn = IDENTITIES[test_id]
        return f"{family}, {given}"

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": API_KEY}, timeout=60)


@pytest.fixture(scope="module")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SekmetServer]:
    server = SekmetServer(tmp_path_factory.mktemp("ui-sekmet")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    with oidc_provider(IDP_USERS) as url:
        yield url


# The rule-test patients screened for RELIEVE: one per verdict, one two people decide at once,
# and those the coordinator's day decides on (an ended session, feedback, the screening log).
SCREENED = (
    "candidate",
    "potential-candidate-without-survival",
    "deceased-false",
    "deceased-flag",
    "stabilization-completed-within-window",
    "decompression-in-progress",
    "two-lesions-in-one-region",
    "proposed-radiosurgery-plan",
)
MRN_SYSTEM = "http://hospital.example.org/fhir/sid/mrn"
MR_TYPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}
# Who they are: (family, given, MRN). Two share a family name; one MRN is the start of another.
IDENTITIES = {
    "candidate": ("Ångström", "Lena", "MRN-1001"),
    "potential-candidate-without-survival": ("Okafor", "Chidi", "MRN-1002"),
    "deceased-false": ("Lindqvist", "Maja", "MRN-1003"),
    "deceased-flag": ("Lindqvist", "Jonas", "MRN-10031"),
    "stabilization-completed-within-window": ("Moreau", "Agnès", "MRN-1005"),
    "decompression-in-progress": ("Haddad", "Omar", "MRN-1006"),
    "two-lesions-in-one-region": ("Nowak", "Ewa", "MRN-1007"),
    "proposed-radiosurgery-plan": ("O'Brien", "Niall", "MRN-1008"),
}


def name_patients(fhir_url: str, loaded: LoadedPatients) -> None:
    """Give the screened patients a name and MRNs on the FHIR server: the hospital's, listed
    after a partner hospital's (also typed MR: PRESCREEN_MRN_SYSTEM picks the right one) and
    after an old number (use old) that is another patient's MRN today."""
    by_test = {t.id: pid for pid, t in loaded.tests.items()}
    with httpx.Client(base_url=fhir_url, timeout=60) as client:
        for test_id, (family, given, mrn) in IDENTITIES.items():
            pid = by_test[test_id]
            patient = client.get(f"/Patient/{pid}").raise_for_status().json()
            patient["name"] = [{"use": "official", "family": family, "given": [given]}]
            patient["identifier"] = [
                {"use": "old", "type": MR_TYPE, "system": MRN_SYSTEM, "value": "MRN-1002"},
                {"type": MR_TYPE, "system": "http://partner.example.org/mrn", "value": "P-77"},
                {"type": MR_TYPE, "system": MRN_SYSTEM, "value": mrn},
            ]
            client.put(f"/Patient/{pid}", json=patient).raise_for_status()


@pytest.fixture(scope="module")
def site(
    fhir_server: SekmetServer, issuer: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    loaded = LoadedPatients(fhir_server.base_url, f"ui{uuid.uuid4().hex[:6]}x")
    name_patients(fhir_server.base_url, loaded)
    database = f"sqlite:///{tmp_path_factory.mktemp('ui-state') / 'state.db'}"
    add_person(database, "carol", "coordinator", trials=["relieve"], identity=(issuer, "carol-sub"))
    add_person(database, "dora", "coordinator", identity=(issuer, "dora-sub"))
    add_person(database, "olga", "coordinator")  # from before accounts were linked
    port = free_port()
    settings = Settings(
        fhir_url=fhir_server.base_url,
        database_url=database,
        public_url=f"http://127.0.0.1:{port}",
        api_keys=api_keys(),
        ui_mode="oidc",
        oidc_issuer=issuer,
        oidc_client_id="prescreen-ui",
        oidc_client_secret="client-secret-for-tests",
        oidc_roles_claim=ROLES_CLAIM,
        session_secret="session-secret-for-tests",
        mrn_system=MRN_SYSTEM,
    )
    with running_service(settings, port) as url:
        site = Site(url, fhir_server.base_url, issuer, loaded, settings)
        with site.api() as api:
            patients = [site.patient(test) for test in SCREENED]
            screened = api.post(
                "/screenings",
                json={"trial": "relieve", "patients": patients, "as_of": SAMPLE_AS_OF},
            )
            screened.raise_for_status()
        yield site


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Any]:
    """Chromium, started after the site: Playwright's synchronous API runs an event loop in this
    thread, and the site's set-up (asyncio.run) must come before it."""
    missing = chromium_missing()
    if missing:
        # CI installs Chromium (.ci/run): there, a missing browser is a failure, not a skip.
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()
