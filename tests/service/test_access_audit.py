"""The access audit and the overview's counts in the state database (SQLite, and PostgreSQL
when PRESCREEN_TEST_POSTGRES_URL is set): recorded and read back by person, patient and action;
claimed for sending by one replica at a time; retried after a failure, then given up; and the
source's patients and last screening a population run leaves."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from service.state.audit import FAILED, GIVE_UP_AFTER, PENDING, SENT, AuditLog, retry_wait
from service.state.models import AccessEvent, Run
from service.state.overview import OverviewStore
from service.state.store import Store, migrate, now
from tests.integration.servers import SekmetServer, free_port
from tests.service.conftest import Helpers, running_service, service_settings, wait_for

AUDITOR = "auditor-key"


def test_accesses_are_read_back_newest_first_by_person_patient_and_action(
    database_url: str,
) -> None:
    migrate(database_url)
    store = Store(database_url)
    try:
        log = AuditLog(store.engine)
        log.record(
            "carol", "view", "ui", patient_id="p1", trial="relieve", client_address="10.0.0.1"
        )
        log.record("carol", "decision", "ui", patient_id="p1", detail={"status": "eligible"})
        log.record("dora", "view", "ui", patient_id="p2")
        log.record("engine", "export", "api", detail={"filters": {"trial": "relieve"}, "rows": 2})
        everything = log.page()
        assert everything.total == 4
        assert [r.user_name for r in everything.rows] == ["engine", "dora", "carol", "carol"]
        assert [r.action for r in log.page(user_name="carol").rows] == ["decision", "view"]
        by_patient = log.page(patient_id="p1", action="view")
        assert by_patient.total == 1 and by_patient.rows[0].client_address == "10.0.0.1"
        second = log.page(offset=2, limit=1)
        assert second.total == 4 and [r.user_name for r in second.rows] == ["carol"]
        # Not configured for the FHIR server: nothing waits to be sent.
        assert log.claim_due() == [] and log.fhir_states() == {}
    finally:
        store.close()


def test_a_pending_event_is_claimed_once_retried_after_a_failure_and_given_up_at_last(
    database_url: str,
) -> None:
    migrate(database_url)
    store = Store(database_url)
    try:
        log = AuditLog(store.engine)
        first = log.record("carol", "view", "ui", patient_id="p1", to_fhir=True)
        second = log.record("carol", "view", "ui", patient_id="p2", to_fhir=True)
        assert [e.id for e in log.claim_due()] == [first, second]
        assert log.claim_due() == []  # claimed: another replica does not take them
        log.mark_sent(first)
        log.mark_failed(second, "fhir-unavailable")
        rows = {r.id: r for r in log.page().rows}
        assert rows[first].fhir_state == SENT and rows[first].fhir_error == ""
        assert rows[second].fhir_state == PENDING and rows[second].fhir_tries == 1
        assert rows[second].fhir_error == "fhir-unavailable"
        assert rows[second].fhir_next_at is not None and rows[second].fhir_next_at > now()
        assert log.claim_due() == []  # not before its retry time
        with store.session() as session:
            session.execute(
                update(AccessEvent)
                .where(AccessEvent.id == second)
                .values(fhir_next_at=now() - timedelta(seconds=1), fhir_tries=GIVE_UP_AFTER - 1)
            )
        assert [e.id for e in log.claim_due()] == [second]
        log.mark_failed(second, "fhir-http-422")
        assert log.fhir_states() == {SENT: 1, FAILED: 1}
        assert log.claim_due() == []
        assert retry_wait(1) == timedelta(seconds=10) and retry_wait(30) == timedelta(hours=1)
    finally:
        store.close()


def test_the_source_of_a_finished_run_and_the_last_screening(database_url: str) -> None:
    migrate(database_url)
    store = Store(database_url)
    try:
        overview = OverviewStore(store.engine)
        assert overview.source_sizes() == {} and overview.last_screened() == {}
        older = store.create_run("relieve", "ndjson", "/data/a", "2026-06-15", False)
        store.select_patients(older.id, ["a", "b"])
        store.finish_run(older.id, "done", {})
        newer = store.create_run("relieve", "fhir", "", "2026-06-15", False)
        store.select_patients(newer.id, ["a", "b", "c"])
        store.finish_run(newer.id, "done", {})
        failed = store.create_run("ssrs", "fhir", "x,y", "2026-06-15", False)
        store.select_patients(failed.id, ["x", "y"])
        store.finish_run(failed.id, "failed", {}, "fhir-unavailable")
        with store.session() as session:  # the runs ended a minute apart
            session.execute(
                update(Run)
                .where(Run.id == older.id)
                .values(updated_at=now() - timedelta(minutes=1))
            )
        sizes = overview.source_sizes()
        assert set(sizes) == {"relieve"}  # a failed run says nothing of its source
        assert (sizes["relieve"].patients, sizes["relieve"].kind) == (3, "cohort")
        verdict = {"patient": "Patient/a", "verdict": "candidate", "criteria": {}}
        store.upsert_candidate("relieve", verdict, "2026-06-15")
        store.upsert_candidate("relieve", verdict | {"patient": "Patient/b"}, "2026-06-15")
        (screened_at,) = overview.last_screened().values()
        assert screened_at <= now() and overview.distinct_patients() == 2
    finally:
        store.close()


@pytest.mark.integration
def test_the_service_sends_its_audit_to_the_fhir_server_in_the_background(
    sekmet: SekmetServer, helpers: Helpers, database_url: str
) -> None:
    port = free_port()
    settings = service_settings(sekmet, helpers, database_url, port, audit_to_fhir=True)
    keys = json.loads(settings.api_keys) | {"auditor": {"key": AUDITOR, "scopes": ["audit"]}}
    settings = settings.model_copy(update={"api_keys": json.dumps(keys)})
    with running_service(settings, port) as running:
        with running.client() as engine:
            assert engine.get("/candidates.csv", params={"trial": "relieve"}).status_code == 200
            assert engine.get("/audit").status_code == 403  # the scope is the auditor's
        with running.client(AUDITOR) as auditor:
            assert auditor.get("/audit", params={"patient": "not a FHIR id"}).status_code == 422

            def sent() -> Any:
                (entry,) = auditor.get("/audit", params={"action": "export"}).json()["entries"]
                return entry if entry["audit_event"]["state"] == "sent" else None

            entry = wait_for(sent, 120)
    assert entry["user"] == "engine" and entry["via"] == "api"
    assert entry["detail"]["filters"]["trial"] == "relieve"
    event = httpx.get(
        f"{sekmet.base_url}/AuditEvent/{entry['audit_event']['id']}",
        headers={"Accept": "application/fhir+json"},
        timeout=60,
    ).json()
    assert event["action"] == "E" and event["agent"][0]["who"]["display"] == "engine"


def test_migration_0007_goes_down_and_up_keeping_the_verdict_history(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import func, select

    from service.state.models import VerdictEvent
    from service.state.store import MIGRATIONS

    migrate(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url)
    command.downgrade(config, "0006")
    command.upgrade(config, "head")
    store = Store(database_url)
    try:
        verdict = {"patient": "Patient/a", "verdict": "candidate", "criteria": {}}
        store.upsert_candidate("relieve", verdict, "2026-06-15")
        with store.session() as session:  # written by the triggers of migration 0004
            assert session.scalar(select(func.count()).select_from(VerdictEvent)) == 1
        assert AuditLog(store.engine).record("carol", "view", "ui", patient_id="a") > 0
    finally:
        store.close()
