"""Races between runs, requests and replicas, and errors that carry no patient data.

Every race is provoked, never waited for: threads meet at a barrier just before the statement
that raced, a webhook receiver holds a delivery until the test lets it go, a FHIR transport
holds transaction Bundles until both writers have sent theirs. Each test runs on SQLite and,
when PRESCREEN_TEST_POSTGRES_URL is set, on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from datetime import date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import event, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from service.alerts import Alerter, AlertSettings
from service.api.engine import ScreeningService
from service.fhir.client import FhirClient
from service.fhir.connect import read_capabilities
from service.fhir.writeback import WriteBack
from service.ruleset.loader import RuleSet, load_ruleset
from service.screening.live import LiveOptions, Selection, screen_server
from service.settings import Settings
from service.state.cds_hooks import CdsStore
from service.state.models import Alert, Run
from service.state.store import CandidateChange, Store, migrate, now
from tests.conftest import MAPPINGS_DIR, RULES_DIR, SAMPLE_DIR
from tests.integration.conftest import LoadedPatients, search_all
from tests.integration.servers import SekmetServer

AS_OF = "2026-06-15"
STUDY_KEY_TAG = "urn:prescreen:key|NCT06746103/Patient/"

# --- real parts the tests hold still ---------------------------------------------------------


class MeetBefore:
    """Holds each of ``parties`` threads just before it first executes a statement that starts
    with ``prefix``, until all of them are there: whatever each read before writing, it read
    before any of the others wrote. A thread that never comes breaks the barrier (a failure,
    not a hang)."""

    def __init__(self, engine: Engine, prefix: str, parties: int = 2) -> None:
        self.engine = engine
        self.prefix = prefix.upper()
        self.barrier = threading.Barrier(parties, timeout=60)
        self.passed: set[int] = set()

    def __enter__(self) -> MeetBefore:
        event.listen(self.engine, "before_cursor_execute", self._hook)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._hook)

    def _hook(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        me = threading.get_ident()
        if statement.lstrip().upper().startswith(self.prefix) and me not in self.passed:
            self.passed.add(me)
            self.barrier.wait()


def race(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads at once; their results, or the exceptions they raised."""
    results: list[Any] = [None] * len(calls)

    def one(index: int) -> None:
        try:
            results[index] = calls[index]()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a racing call never finished"
    return results


class HeldWebhook:
    """A webhook receiver on 127.0.0.1 that holds the first delivery until ``release`` is set
    (a slow coordinator system); later deliveries are answered at once."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.first_arrived = threading.Event()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with lock:
                    receiver.bodies.append(orjson.loads(body))
                    first = len(receiver.bodies) == 1
                if first:
                    receiver.first_arrived.set()
                    receiver.release.wait(120)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def webhook() -> Iterator[HeldWebhook]:
    receiver = HeldWebhook()
    try:
        yield receiver
    finally:
        receiver.close()


SECRET_ID = "pt-7c1e5"
SECRET_NAME = "Jane Quinterro-Doe"


class LeakyFhir:
    """A FHIR server on 127.0.0.1 whose errors quote the patient, as real servers' diagnostics
    do: a CapabilityStatement, then 404 with an OperationOutcome naming the patient for any
    other request."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0].endswith("/metadata"):
                    self._answer(
                        200,
                        {
                            "resourceType": "CapabilityStatement",
                            "fhirVersion": "4.0.1",
                            "rest": [{"mode": "server"}],
                        },
                    )
                    return
                diagnostics = f"Patient/{SECRET_ID} ({SECRET_NAME}, born 1951-02-03) is unknown"
                self._answer(
                    404,
                    {
                        "resourceType": "OperationOutcome",
                        "issue": [
                            {"severity": "error", "code": "not-found", "diagnostics": diagnostics}
                        ],
                    },
                )

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                payload = orjson.dumps(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/fhir"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def leaky_fhir() -> Iterator[LeakyFhir]:
    server = LeakyFhir()
    try:
        yield server
    finally:
        server.close()


class TransactionGate:
    """Holds transaction Bundles that write a patient (they carry a Provenance) until
    ``together`` of them are waiting, or ``patience`` seconds have passed: two writers that do
    not wait for each other are then in flight at once, as in the race. Writers that do wait
    for each other lose nothing but the patience."""

    def __init__(self, together: int = 2, patience: float = 3.0) -> None:
        self.together = together
        self.patience = patience
        self.arrived = 0
        self.all_here = asyncio.Event()

    async def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.together:
            self.all_here.set()
        with suppress(TimeoutError):
            await asyncio.wait_for(self.all_here.wait(), self.patience)


class HoldingTransport(httpx.AsyncBaseTransport):
    """Passes every request on to the real server, through the gate for patient writes."""

    def __init__(self, gate: TransactionGate) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.gate = gate

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and b'"Provenance"' in request.content:
            await self.gate.arrive()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


# --- replicas ------------------------------------------------------------------------------


def migrated_store(database_url: str) -> Store:
    migrate(database_url)
    return Store(database_url)


def replica(
    database_url: str,
    relieve: RuleSet,
    *,
    fhir_url: str | None = None,
    webhook_url: str | None = None,
    lease_seconds: float = 30.0,
    trials: dict[str, RuleSet] | None = None,
) -> ScreeningService:
    """One replica of the service (what the app's start-up builds), on a shared database."""
    settings = Settings(
        database_url=database_url,
        fhir_url=fhir_url,
        webhook_url=webhook_url,
        lease_seconds=lease_seconds,
        fhir_retries=1,
        ndjson_roots=str(SAMPLE_DIR),
    )
    store = Store(database_url)
    alerter = Alerter(
        store,
        AlertSettings(
            webhook_url=webhook_url,
            webhook_secret=None,
            smtp_host=None,
            smtp_port=25,
            smtp_from="prescreen@localhost",
            smtp_to=(),
            worklist_url="http://127.0.0.1/candidates",
        ),
    )
    return ScreeningService(settings, store, alerter, {"relieve": relieve, **(trials or {})})


async def stop(*replicas: ScreeningService) -> None:
    for service in replicas:
        await service.aclose()
        service.store.close()


def verdict(patient_id: str, outcome: str) -> dict[str, Any]:
    return {"patient": f"Patient/{patient_id}", "verdict": outcome, "criteria": {}}


# --- worklist writes: upserts ----------------------------------------------------------------


def test_a_run_and_a_request_writing_one_candidate_at_once_both_succeed(
    database_url: str,
) -> None:
    """The population run and an on-demand screening upsert the same new patient; both had
    read "no row yet" when they wrote. Before: a unique-constraint error failed the run (and
    answered the request with 500)."""
    store = migrated_store(database_url)
    try:
        with MeetBefore(store.engine, "INSERT INTO candidates"):
            results = race(
                lambda: store.upsert_candidate(
                    "relieve", verdict("p1", "potential-candidate"), AS_OF
                ),
                lambda: store.upsert_candidate("relieve", verdict("p1", "candidate"), AS_OF),
            )
        assert not [r for r in results if isinstance(r, Exception)], results
        first, second = sorted(results, key=lambda change: change.previous is not None)
        # One inserted the row, the other updated it and saw what the first had written.
        assert first.previous is None
        assert second.previous == first.current
        (row,) = store.candidates("relieve", None, None, 0, 10)
        assert row.verdict == row.status == second.current
    finally:
        store.close()


def test_two_replicas_recording_a_runs_patients_at_once_both_succeed(database_url: str) -> None:
    store = migrated_store(database_url)
    try:
        run = store.create_run("relieve", "fhir", "", AS_OF, False)
        ids = [f"p{i}" for i in range(30)]
        with MeetBefore(store.engine, "INSERT INTO run_patients"):
            results = race(
                lambda: store.select_patients(run.id, ids),
                lambda: store.select_patients(run.id, ids),
            )
        assert not [r for r in results if isinstance(r, Exception)], results
        recorded = store.get_run(run.id)
        assert recorded is not None and recorded.total == len(ids)
        assert store.pending_of(run.id) == sorted(ids)
    finally:
        store.close()


def test_two_replicas_taking_due_rescreens_at_once_get_each_patient_once(
    database_url: str,
) -> None:
    store = migrated_store(database_url)
    try:
        store.queue("relieve", {"p1", "p2", "p3"}, 0.0)
        with MeetBefore(store.engine, "DELETE FROM pending_patients"):
            results = race(store.take_due, store.take_due)
        assert not [r for r in results if isinstance(r, Exception)], results
        taken = [pid for result in results for pid in result.get("relieve", [])]
        assert sorted(taken) == ["p1", "p2", "p3"]  # all of them, none twice
    finally:
        store.close()


def test_concurrent_notifications_and_alert_claims_never_raise(database_url: str) -> None:
    store = migrated_store(database_url)
    try:
        with MeetBefore(store.engine, "INSERT INTO pending_patients"):
            results = race(
                lambda: store.queue("relieve", {"p1", "p2"}, 60.0),
                lambda: store.queue("relieve", {"p2", "p1"}, 60.0),
            )
        assert results == [None, None]
        with MeetBefore(store.engine, "INSERT INTO alerts"):
            claims = race(
                lambda: store.claim_alert("relieve", "p1", "candidate", "webhook", 30.0),
                lambda: store.claim_alert("relieve", "p1", "candidate", "webhook", 30.0),
            )
        assert not [c for c in claims if isinstance(c, Exception)], claims
        assert sum(c is not None for c in claims) == 1  # claimed once
    finally:
        store.close()


# --- alerts: a retry never resends an alert in flight ----------------------------------------


def test_a_slow_webhook_is_not_sent_again_by_retries(
    database_url: str, relieve: RuleSet, webhook: HeldWebhook
) -> None:
    """The webhook hangs on the first delivery; meanwhile this replica's retry loop and another
    replica's run. Before: both resent the alert still in flight."""
    migrate(database_url)
    a = replica(database_url, relieve, webhook_url=webhook.url)
    b = replica(database_url, relieve, webhook_url=webhook.url)

    async def scenario() -> None:
        try:
            change = CandidateChange("relieve", "p1", None, "candidate")
            first = asyncio.create_task(a.alerter.consider(change))
            await asyncio.to_thread(webhook.first_arrived.wait, 60)
            await a.alerter.retry_unsent()
            await b.alerter.retry_unsent()
            webhook.release.set()
            await first
        finally:
            await stop(a, b)

    asyncio.run(scenario())
    assert [body["patient"] for body in webhook.bodies] == ["Patient/p1"]
    store = Store(database_url)
    try:
        (alert,) = store.alerts()
        assert alert.state == "sent" and alert.attempts == 1
    finally:
        store.close()


def test_an_alert_left_in_flight_by_a_stopped_replica_is_sent_once_its_lease_expires(
    database_url: str, relieve: RuleSet, webhook: HeldWebhook
) -> None:
    store = migrated_store(database_url)
    b = replica(database_url, relieve, webhook_url=webhook.url)
    webhook.release.set()  # nothing to hold here
    try:
        live = store.claim_alert("relieve", "p1", "candidate", "webhook", 3600.0)
        gone = store.claim_alert("relieve", "p2", "candidate", "webhook", -1.0)  # lease ran out
        assert live is not None and gone is not None

        asyncio.run(b.alerter.retry_unsent())
        assert [body["patient"] for body in webhook.bodies] == ["Patient/p2"]
    finally:
        asyncio.run(stop(b))
        store.close()


# --- runs: owned, leased, taken over only when the lease expired -----------------------------


def test_a_restarted_replica_leaves_another_replicas_live_run_alone(
    database_url: str, relieve: RuleSet, webhook: HeldWebhook
) -> None:
    """Replica A is in the middle of a run (its first alert hangs at the webhook) when replica
    B starts and resumes unfinished runs. Before: B ran A's run a second time, to the end."""
    migrate(database_url)
    a = replica(database_url, relieve, webhook_url=webhook.url)
    b = replica(database_url, relieve, webhook_url=webhook.url)
    states: dict[str, Any] = {}

    async def scenario() -> None:
        try:
            run = await asyncio.to_thread(
                a.store.create_run, "relieve", "ndjson", str(SAMPLE_DIR), AS_OF, False
            )
            a.spawn(a.execute_run(run.id))
            assert await asyncio.to_thread(webhook.first_arrived.wait, 120)
            await b.resume_runs()  # B starting up
            await asyncio.gather(*b.tasks)  # whatever B took up, to its end
            states["during"] = await asyncio.to_thread(b.store.get_run, run.id)
            webhook.release.set()
            await asyncio.gather(*a.tasks)
            states["after"] = await asyncio.to_thread(b.store.get_run, run.id)
        finally:
            await stop(a, b)

    asyncio.run(scenario())
    during, after = states["during"], states["after"]
    assert during.status == "running" and during.done < during.total
    assert after.status == "done" and after.done == after.total == 300
    patients = [body["patient"] for body in webhook.bodies]
    assert len(patients) == len(set(patients))  # each alert once


def test_a_run_whose_replica_stopped_renewing_is_taken_over(
    database_url: str, relieve: RuleSet
) -> None:
    store = migrated_store(database_url)
    b = replica(database_url, relieve)
    try:
        run = store.create_run("relieve", "ndjson", str(SAMPLE_DIR), AS_OF, False)
        assert store.claim_run(run.id, "replica-a", 3600.0)

        async def resume() -> None:
            await b.resume_runs()
            await asyncio.gather(*b.tasks)

        asyncio.run(resume())
        untouched = store.get_run(run.id)
        assert untouched is not None and untouched.status == "queued"
        assert untouched.owner == "replica-a"

        assert store.claim_run(run.id, "replica-a", -1.0)  # A stops: its lease runs out
        asyncio.run(resume())
        taken = store.get_run(run.id)
        assert taken is not None and taken.status == "done" and taken.done == 300
        assert taken.owner == b.replica
        # A, back from a stall, cannot overwrite the outcome of the replica that took over.
        assert not store.finish_run(run.id, "failed", {}, "internal-error", owner="replica-a")
        final = store.get_run(run.id)
        assert final is not None and final.status == "done"
    finally:
        asyncio.run(stop(b))
        store.close()


def test_a_replica_renews_its_lease_and_one_that_lost_it_records_no_outcome(
    database_url: str, relieve: RuleSet, webhook: HeldWebhook
) -> None:
    """A short lease is renewed while A's first alert hangs. Then the claim is taken from A (as
    after A stalled past its lease): A must not finish the run it no longer owns."""
    migrate(database_url)
    a = replica(database_url, relieve, webhook_url=webhook.url, lease_seconds=0.3)
    states: dict[str, Any] = {}

    async def scenario() -> None:
        try:
            run = await asyncio.to_thread(
                a.store.create_run, "relieve", "ndjson", str(SAMPLE_DIR), AS_OF, False
            )
            a.spawn(a.execute_run(run.id))
            assert await asyncio.to_thread(webhook.first_arrived.wait, 120)
            first = await asyncio.to_thread(lease_of, a.store, run.id)
            states["renewed"] = await until(lambda: lease_of(a.store, run.id) > first)
            await asyncio.to_thread(take_over, a.store, run.id, "replica-b")
            webhook.release.set()
            await asyncio.gather(*a.tasks)
            states["after"] = await asyncio.to_thread(a.store.get_run, run.id)
        finally:
            await stop(a)

    asyncio.run(scenario())
    assert states["renewed"]
    after = states["after"]
    assert after.owner == "replica-b" and after.status == "running"


async def until(check: Callable[[], bool], seconds: float = 120.0) -> bool:
    """Poll the database until ``check`` holds (the pace of polling decides nothing)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await asyncio.to_thread(check):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def lease_of(store: Store, run_id: str) -> datetime:
    run = store.get_run(run_id)
    assert run is not None and run.lease_until is not None
    return run.lease_until


def take_over(store: Store, run_id: str, owner: str) -> None:
    """What another replica's claim does once the lease has run out, done directly."""
    with store.session() as session:
        session.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(owner=owner, lease_until=now() + timedelta(hours=1))
        )


# --- write-back: one per patient at a time ---------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("replicas", [1, 2], ids=["one-replica", "two-replicas"])
def test_concurrent_screenings_of_one_patient_write_back_once(
    replicas: int, database_url: str, relieve: RuleSet, sekmet: SekmetServer
) -> None:
    """Two screenings of a new candidate, at once, by one replica or two. Both planned their
    write before either wrote, before: two transactions, two Provenances."""
    migrate(database_url)
    loaded = LoadedPatients(sekmet.base_url, f"r{uuid.uuid4().hex[:6]}x")
    patient = next(pid for pid, t in loaded.tests.items() if t.id == "candidate")
    gate = TransactionGate()
    services = [replica(database_url, relieve, fhir_url=sekmet.base_url) for _ in range(replicas)]
    for service in services:
        service._client = FhirClient(sekmet.base_url, transport=HoldingTransport(gate))
    first, second = services[0], services[-1]
    as_of = date.fromisoformat(AS_OF)

    async def scenario() -> list[list[dict[str, Any]]]:
        try:
            # The study exists before the race (its creation is not what is raced here).
            async with FhirClient(sekmet.base_url) as client:
                abilities = read_capabilities(await client.capabilities())
                writer = WriteBack(
                    client, relieve, as_of, "urn:prescreen:research-subject", abilities=abilities
                )
                await writer.prepare(load_subjects=False)
            return list(
                await asyncio.gather(
                    first.screen("relieve", [patient], as_of, True),
                    second.screen("relieve", [patient], as_of, True),
                )
            )
        finally:
            await stop(*services)

    answers = asyncio.run(scenario())
    assert [a[0]["verdict"] for a in answers] == ["candidate", "candidate"]
    subjects = search_all(sekmet.base_url, "ResearchSubject", {"_tag": STUDY_KEY_TAG + patient})
    assert len(subjects) == 1
    subject = f"ResearchSubject/{subjects[0]['id']}"
    provenance = search_all(sekmet.base_url, "Provenance", {"_count": "200"})
    written = [p for p in provenance if any(t["reference"] == subject for t in p["target"])]
    assert len(written) == 1


# --- no patient data in errors ---------------------------------------------------------------


def test_a_failed_run_stores_the_error_kind_not_the_servers_words(
    database_url: str,
    relieve: RuleSet,
    leaky_fhir: LeakyFhir,
    caplog: pytest.LogCaptureFixture,
) -> None:
    migrate(database_url)
    service = replica(database_url, relieve, fhir_url=leaky_fhir.url)

    async def scenario() -> Any:
        try:
            run = await asyncio.to_thread(
                service.store.create_run, "relieve", "fhir", SECRET_ID, AS_OF, False
            )
            await service.execute_run(run.id)
            return await asyncio.to_thread(service.store.get_run, run.id)
        finally:
            await stop(service)

    with caplog.at_level(logging.DEBUG):
        failed = asyncio.run(scenario())
    assert failed.status == "failed"
    assert failed.error == "fhir-http-404"  # what GET /runs/{id} returns
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("service"))
    assert "fhir-http-404" in ours
    assert SECRET_ID not in ours and SECRET_NAME not in ours


def test_unscreened_patients_list_error_kinds_not_the_servers_words(
    relieve: RuleSet, leaky_fhir: LeakyFhir, tmp_path: Path
) -> None:
    options = LiveOptions(
        as_of=date.fromisoformat(AS_OF),
        out=tmp_path / "live",
        selection=Selection("ids", ids=(SECRET_ID,)),
    )

    async def screen() -> Any:
        async with FhirClient(leaky_fhir.url) as client:
            return await screen_server(relieve, client, options)

    summary = asyncio.run(screen())
    assert summary.unscreened == {SECRET_ID: "server error: fhir-http-404"}
    written = (options.out / "unscreened.ndjson").read_text()
    assert orjson.loads(written) == {
        "patient": f"Patient/{SECRET_ID}",
        "reason": "server error: fhir-http-404",
    }
    everything = "".join(p.read_text() for p in options.out.iterdir() if p.is_file())
    assert SECRET_NAME not in everything


# --- alerts: exactly once per (trial, patient, status), across replicas and trials -------------


def test_two_replicas_running_two_trials_alert_each_trial_patient_and_status_once(
    database_url: str, relieve: RuleSet, webhook: HeldWebhook
) -> None:
    """Both replicas run both trials on the sample hospital at once (four runs, every
    (trial, patient, status) raced by two of them). The finding counted 52 deliveries for 51
    (patient, status) pairs: a patient flagged by both trials is alerted once per trial, by
    design (each trial's coordinators need it). The key is (trial, patient, status): each
    such key must be delivered exactly once, whichever replica won it."""
    ssrs = load_ruleset(RULES_DIR / "ssrs.yaml", MAPPINGS_DIR)
    migrate(database_url)
    webhook.release.set()  # nothing held: every delivery answered at once
    replicas = [
        replica(database_url, relieve, webhook_url=webhook.url, trials={"ssrs": ssrs})
        for _ in range(2)
    ]

    async def scenario() -> None:
        try:
            for service in replicas:
                for trial in ("relieve", "ssrs"):
                    run = await asyncio.to_thread(
                        service.store.create_run, trial, "ndjson", str(SAMPLE_DIR), AS_OF, False
                    )
                    service.spawn(service.execute_run(run.id))
            await asyncio.gather(*(task for service in replicas for task in list(service.tasks)))
        finally:
            await stop(*replicas)

    asyncio.run(scenario())
    keys = [(body["trial"], body["patient"], body["status"]) for body in webhook.bodies]
    assert len(keys) == len(set(keys)), "a (trial, patient, status) was alerted twice"
    store = Store(database_url)
    try:
        flagged = {
            (row.trial, f"Patient/{row.patient_id}", row.verdict)
            for trial in ("relieve", "ssrs")
            for row in store.candidates(trial, None, None, 0, 1000)
            if row.verdict in ("candidate", "potential-candidate")
        }
        assert set(keys) == flagged  # every flagged key alerted, none twice
        assert all(alert.state == "sent" and alert.attempts == 1 for alert in store.alerts())
    finally:
        store.close()
    pairs = {(patient, status) for _, patient, status in keys}
    assert len(pairs) < len(keys)  # some patients are flagged by both trials: one per trial


class StoreFailingOnce(Store):
    """The database fails the first time a delivery's outcome is written (a lock timeout, a
    connection dropped): a fault the real database cannot be made to show on demand."""

    failed = False

    def mark_alert(self, alert_id: int, state: str) -> None:
        if not self.failed:
            self.failed = True
            raise OperationalError("UPDATE alerts", {}, Exception("database is locked"))
        super().mark_alert(alert_id, state)


def test_a_delivered_alert_whose_outcome_could_not_be_written_at_once_is_not_sent_again(
    database_url: str, relieve: RuleSet, webhook: HeldWebhook
) -> None:
    """Before: the failed write left the alert "pending"; once its lease had run out, a retry
    (on any replica) delivered it a second time."""
    migrate(database_url)
    webhook.release.set()
    a = replica(database_url, relieve, webhook_url=webhook.url)
    a.store.close()
    a.store = a.alerter.store = StoreFailingOnce(database_url)
    b = replica(database_url, relieve, webhook_url=webhook.url)

    async def scenario() -> None:
        try:
            with suppress(OperationalError):
                await a.alerter.consider(CandidateChange("relieve", "p1", None, "candidate"))
            # Whatever lease the first delivery held has run out (as if much time passed).
            with b.store.session() as session:
                session.execute(update(Alert).values(lease_until=now() - timedelta(seconds=1)))
            await b.alerter.retry_unsent()
        finally:
            await stop(a, b)

    asyncio.run(scenario())
    assert [body["patient"] for body in webhook.bodies] == ["Patient/p1"]
    store = Store(database_url)
    try:
        (alert,) = store.alerts()
        assert alert.state == "sent"
    finally:
        store.close()


def test_a_cds_token_presented_to_two_replicas_at_once_is_accepted_once(
    database_url: str,
) -> None:
    first, second = migrated_store(database_url), Store(database_url)
    try:
        expires = now() + timedelta(minutes=5)
        # Each call opens its transaction with the prune of expired tokens, then inserts.
        meet = MeetBefore(first.engine, "DELETE FROM cds_token_uses")
        event.listen(second.engine, "before_cursor_execute", meet._hook)
        try:
            with meet:
                results = race(
                    lambda: CdsStore(first).first_use("https://ehr.example", "one-jti", expires),
                    lambda: CdsStore(second).first_use("https://ehr.example", "one-jti", expires),
                )
        finally:
            event.remove(second.engine, "before_cursor_execute", meet._hook)
        assert sorted(results) == [False, True]  # one accepted, the replay refused, no error
    finally:
        first.close()
        second.close()
