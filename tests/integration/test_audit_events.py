"""The access audit sent to real FHIR servers (sekmet-fhir and HAPI FHIR) as AuditEvents: each
written once under its own id, read back, and valid for the HAPI FHIR instance validator; a
server that cannot be reached leaves the events pending, with the error's kind, for a retry."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from service.api.audit import send_due
from service.fhir.client import FhirClient
from service.state.audit import PENDING, SENT, AuditLog
from service.state.models import AccessEvent
from service.state.store import Store, migrate, now
from tests.conformance.conftest import fhir_validator  # noqa: F401  (the fixture)
from tests.conformance.validator import InstanceValidator, errors_of
from tests.integration.servers import free_port

pytestmark = pytest.mark.integration


def _record(log: AuditLog) -> None:
    log.record(
        "carol",
        "view",
        "ui",
        patient_id="p-1",
        trial="relieve",
        client_address="127.0.0.1",
        to_fhir=True,
    )
    log.record(
        "carol",
        "decision",
        "ui",
        patient_id="p-1",
        trial="relieve",
        detail={"status": "eligible"},
        client_address="127.0.0.1",
        to_fhir=True,
    )
    log.record(
        "engine",
        "export",
        "api",
        detail={"filters": {"trial": "relieve", "status": "open"}, "rows": 4},
        client_address="::1",
        to_fhir=True,
    )


async def _send(log: AuditLog, base_url: str) -> int:
    async with FhirClient(base_url) as client:
        return await send_due(log, client, "http://127.0.0.1:8000")


def test_audit_events_are_written_once_and_valid(
    fhir_server: Any,
    fhir_validator: InstanceValidator,  # noqa: F811  (the conformance tests' fixture)
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    migrate(url)
    store = Store(url)
    try:
        log = AuditLog(store.engine)
        _record(log)
        assert asyncio.run(_send(log, fhir_server.base_url)) == 3
        rows = log.page().rows
        assert {r.fhir_state for r in rows} == {SENT}
        written = []
        with httpx.Client(base_url=fhir_server.base_url, timeout=60) as http:
            for row in rows:
                answer = http.get(
                    f"/AuditEvent/{row.uuid}", headers={"Accept": "application/fhir+json"}
                )
                answer.raise_for_status()
                written.append(answer.json())
        assert sorted(e["action"] for e in written) == ["E", "R", "U"]
        checked = fhir_validator.validate(written, f"audit-events-{fhir_server.name}")
        assert errors_of(checked) == ""
        # Sent again (a lost answer, a replica's retry): the same resources, no new ones.
        with store.session() as session:
            session.execute(update(AccessEvent).values(fhir_state=PENDING, fhir_next_at=now()))
        assert asyncio.run(_send(log, fhir_server.base_url)) == 3
        with httpx.Client(base_url=fhir_server.base_url, timeout=60) as http:
            for row in rows:
                history = http.get(
                    f"/AuditEvent/{row.uuid}/_history", headers={"Accept": "application/fhir+json"}
                )
                if history.status_code == 200:
                    assert history.json().get("total", 2) <= 2
    finally:
        store.close()


def test_an_unreachable_server_leaves_the_events_pending_for_a_retry(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    migrate(url)
    store = Store(url)
    try:
        log = AuditLog(store.engine)
        _record(log)
        assert asyncio.run(_send(log, f"http://127.0.0.1:{free_port()}/fhir")) == 0
        rows = log.page().rows
        assert {(r.fhir_state, r.fhir_tries, r.fhir_error) for r in rows} == {
            (PENDING, 1, "fhir-unavailable")
        }
    finally:
        store.close()
