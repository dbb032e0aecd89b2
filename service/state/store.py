"""The service's state: SQLite by default (embedded), PostgreSQL for several replicas.

Every write is its own short transaction, so a crash loses at most the patient being worked on;
uniqueness constraints (one candidate per trial and patient, one alert per candidate, status and
channel) make repeated work harmless across restarts and replicas. Writes that two requests,
runs or replicas can make at once are upserts (``INSERT … ON CONFLICT``), so a race never ends
in a unique-constraint error. Work that must not be done twice at once (a run, an alert being
sent, a patient's write-back) is claimed with an owner and a lease that expires.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import (
    CursorResult,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from service.mapping.display import PatientDetails
from service.private_files import create_private
from service.state.models import (
    Alert,
    Base,
    Candidate,
    PatientRecord,
    PendingPatient,
    Run,
    RunPatient,
    VisitAlert,
    WriteBackClaim,
)
from service.state.patients import details_row

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# Candidate statuses prescreen itself sets; any other status is a coordinator's decision and stays.
PRESCREEN_STATUSES = ("candidate", "potential-candidate", "ineligible")
RESUMABLE = ("queued", "running")


def now() -> datetime:
    """Naive UTC: the same on SQLite (no time zones) and PostgreSQL."""
    return datetime.now(UTC).replace(tzinfo=None)


def private_sqlite(url: str) -> None:
    """A SQLite database file is created 0600 before SQLite opens it (SQLite gives its
    journal files the same permissions): the worklist holds patient data."""
    parsed = make_url(url)
    database = parsed.database
    if not parsed.drivername.startswith("sqlite") or not database or database == ":memory:":
        return
    if database.startswith("file:") or parsed.query.get("uri"):
        return  # a SQLite URI names its own file and options
    path = Path(database)
    if path.parent.is_dir():
        create_private(path)


def migrate(url: str) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    private_sqlite(url)

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "head")


@dataclass(frozen=True)
class CandidateChange:
    """What an upsert changed: the alerts decide on it."""

    trial: str
    patient_id: str
    previous: str | None
    current: str


def _write_ahead_log(connection: Any, _record: Any) -> None:
    """SQLite in write-ahead-log mode: a commit appends to the log and syncs it once, where
    the default rollback journal creates, syncs and deletes a journal file (14 ms against
    0.6 ms a commit, measured here), and readers no longer wait for a writer. Every CDS Hooks
    call commits twice (its jti, its cards) while a clinician waits. The mode is kept in the
    database file; ``synchronous`` stays FULL, so a commit survives a power cut."""
    cursor = connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def _not_synced_at_commit(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    try:
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def unknown_criteria(verdict: dict[str, Any]) -> int:
    """The criteria of a verdict line still unknown (kept with the row for sorting)."""
    criteria = verdict.get("criteria")
    if not isinstance(criteria, dict):
        return 0
    return sum(1 for c in criteria.values() if isinstance(c, dict) and c.get("result") == "unknown")


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        private_sqlite(url)
        connect_args = (
            {"check_same_thread": False, "timeout": 30} if url.startswith("sqlite") else {}
        )
        # hide_parameters: a database error's message would otherwise quote the row's values
        # (patient ids) into logs and tracebacks.
        # A pre-ping finds connections a server dropped; a SQLite file drops none.
        self.engine: Engine = create_engine(
            url,
            connect_args=connect_args,
            pool_pre_ping=not url.startswith("sqlite"),
            hide_parameters=True,
        )
        sqlite = self.engine.dialect.name == "sqlite"
        self._quick = self.engine
        if sqlite:
            event.listen(self.engine, "connect", _write_ahead_log)
        if sqlite and self.engine.url.database not in (None, "", ":memory:"):
            # Writes a power cut may lose at no cost (see ``writing``): committed without
            # waiting for the disk. What the process committed survives its crash. (A
            # database in memory has one connection's worth of state: no second engine.)
            self._quick = create_engine(url, connect_args=connect_args, hide_parameters=True)
            event.listen(self._quick, "connect", _write_ahead_log)
            event.listen(self._quick, "connect", _not_synced_at_commit)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite takes one writer at a time, and one that finds the database locked sleeps
        # (1, 2, 5, 10… ms) before it tries again; writes of this process that come often
        # (CDS Hooks calls) queue on a lock instead. PostgreSQL needs none.
        self._one_writer = threading.Lock() if sqlite else None

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A short write transaction without the ORM, for writes made while someone waits
        whose loss in a power cut costs nothing: a CDS Hooks jti (replays of a token that lives
        five minutes at most) and the cards returned (feedback about them would be refused).
        SQLite commits them without syncing the disk (the log is synced at its next
        checkpoint, or by the next ordinary commit): 0.02 ms against 2 ms, and 0.1 ms against
        18 ms at the 99th percentile, measured on this shared disk. PostgreSQL: as any write."""
        with self._one_writer or nullcontext(), self._quick.begin() as connection:
            yield connection

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()
        self._quick.dispose()

    def _insert(self, table: type[Base]) -> postgresql.Insert | sqlite.Insert:
        """An INSERT that can say ON CONFLICT: each dialect has its own construct for it."""
        if self.engine.dialect.name == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    # --- runs -----------------------------------------------------------------------------------

    def create_run(self, trial: str, source: str, detail: str, as_of: str, write_back: bool) -> Run:
        stamp = now()
        run = Run(
            id=uuid.uuid4().hex,
            trial=trial,
            source=source,
            source_detail=detail,
            as_of=as_of,
            write_back=int(write_back),
            status="queued",
            total=0,
            done=0,
            error="",
            counts={},
            created_at=stamp,
            updated_at=stamp,
        )
        with self.session() as session:
            session.add(run)
        return run

    def get_run(self, run_id: str) -> Run | None:
        with self.session() as session:
            return session.get(Run, run_id)

    def runs_to_resume(self, owner: str) -> list[Run]:
        """Unfinished runs ``owner`` may take: its own, unclaimed ones, and expired claims."""
        with self.session() as session:
            rows = session.scalars(
                select(Run).where(Run.status.in_(RESUMABLE), _run_free_for(owner, now()))
            )
            return list(rows)

    def claim_run(self, run_id: str, owner: str, lease_seconds: float) -> bool:
        """Take the run for ``owner`` unless another replica holds a live lease on it.

        One conditional UPDATE: two replicas claiming at once cannot both succeed (PostgreSQL
        re-checks the condition on the row the other one wrote; SQLite runs one write at a time).
        """
        stamp = now()
        with self.session() as session:
            result = session.execute(
                update(Run)
                .where(Run.id == run_id, Run.status.in_(RESUMABLE), _run_free_for(owner, stamp))
                .values(owner=owner, lease_until=stamp + timedelta(seconds=lease_seconds))
            )
            return _changed(result) == 1

    def renew_run(self, run_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend ``owner``'s lease; False when the run is no longer its own (or finished)."""
        with self.session() as session:
            result = session.execute(
                update(Run)
                .where(Run.id == run_id, Run.owner == owner, Run.status.in_(RESUMABLE))
                .values(lease_until=now() + timedelta(seconds=lease_seconds))
            )
            return _changed(result) == 1

    def select_patients(self, run_id: str, patient_ids: list[str]) -> None:
        """Record the run's patients once; a resumed run keeps the list it had."""
        with self.session() as session:
            known = session.scalar(
                select(func.count()).select_from(RunPatient).where(RunPatient.run_id == run_id)
            )
            if not known and patient_ids:
                # Another replica may be recording the same list at this moment: skip its rows
                # (in one order for both, so that neither waits on the other in a circle).
                rows = [{"run_id": run_id, "patient_id": p} for p in sorted(set(patient_ids))]
                session.execute(
                    self._insert(RunPatient).on_conflict_do_nothing(
                        index_elements=["run_id", "patient_id"]
                    ),
                    rows,
                )
            total = session.scalar(
                select(func.count()).select_from(RunPatient).where(RunPatient.run_id == run_id)
            )
            session.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(status="running", total=total or 0, updated_at=now())
            )

    def has_patients(self, run_id: str) -> bool:
        with self.session() as session:
            count = session.scalar(
                select(func.count()).select_from(RunPatient).where(RunPatient.run_id == run_id)
            )
            return bool(count)

    def pending_of(self, run_id: str) -> list[str]:
        with self.session() as session:
            rows = session.scalars(
                select(RunPatient.patient_id)
                .where(RunPatient.run_id == run_id, RunPatient.verdict.is_(None))
                .order_by(RunPatient.patient_id)
            )
            return list(rows)

    def record_verdicts(self, run_id: str, verdicts: list[dict[str, Any]]) -> None:
        with self.session() as session:
            for verdict in verdicts:
                patient_id = verdict["patient"].removeprefix("Patient/")
                session.execute(
                    update(RunPatient)
                    .where(RunPatient.run_id == run_id, RunPatient.patient_id == patient_id)
                    .values(verdict=verdict)
                )
            done = session.scalar(
                select(func.count())
                .select_from(RunPatient)
                .where(RunPatient.run_id == run_id, RunPatient.verdict.is_not(None))
            )
            session.execute(update(Run).where(Run.id == run_id).values(done=done, updated_at=now()))

    def record_input_issues(self, run_id: str, counts: dict[str, int]) -> None:
        """The input issues of the run's reading, by kind (kinds and counts only: no PHI)."""
        with self.session() as session:
            session.execute(update(Run).where(Run.id == run_id).values(input_issues=dict(counts)))

    def finish_run(
        self,
        run_id: str,
        status: str,
        counts: dict[str, Any],
        error: str = "",
        owner: str | None = None,
    ) -> bool:
        """Close the run (and its lease). With ``owner``, only while the run is still its own:
        a replica that lost its lease does not overwrite the outcome of the one that took over.
        ``error`` is an error kind (service.errors.error_kind), never a message."""
        query = update(Run).where(Run.id == run_id)
        if owner is not None:
            query = query.where(Run.owner == owner)
        with self.session() as session:
            result = session.execute(
                query.values(
                    status=status, counts=counts, error=error, lease_until=None, updated_at=now()
                )
            )
            return _changed(result) == 1

    def verdict_counts(self, run_id: str) -> dict[str, int]:
        """Patients per verdict, streamed from the database a thousand rows at a time."""
        counts: dict[str, int] = {}
        with self.session() as session:
            rows = session.scalars(
                select(RunPatient.verdict)
                .where(RunPatient.run_id == run_id, RunPatient.verdict.is_not(None))
                .execution_options(yield_per=1000)
            )
            for verdict in rows:
                if verdict is not None:
                    counts[verdict["verdict"]] = counts.get(verdict["verdict"], 0) + 1
        return counts

    def run_results(self, run_id: str, offset: int, limit: int) -> list[dict[str, Any]]:
        with self.session() as session:
            rows = session.scalars(
                select(RunPatient.verdict)
                .where(RunPatient.run_id == run_id, RunPatient.verdict.is_not(None))
                .order_by(RunPatient.patient_id)
                .offset(offset)
                .limit(limit)
            )
            return [row for row in rows if row is not None]

    # --- candidates -----------------------------------------------------------------------------

    def upsert_candidate(
        self,
        trial: str,
        verdict: dict[str, Any],
        as_of: str,
        details: PatientDetails | None = None,
    ) -> CandidateChange:
        """Insert or update the patient's row, and say what it was before (the alerts need it).
        ``details`` (who the patient is, from the mapping's display section) are kept with it,
        in the same transaction.

        INSERT … ON CONFLICT DO NOTHING first: a run and a request screening the same patient at
        once both get through, one inserting, the other updating. The update reads the previous
        verdict under a row lock (PostgreSQL; SQLite holds the database's write lock since the
        INSERT), so two updates at once each see the other's result, never the same one.
        """
        patient_id = verdict["patient"].removeprefix("Patient/")
        outcome = verdict["verdict"]
        stamp = now()
        unknown = unknown_criteria(verdict)
        key = (Candidate.trial == trial, Candidate.patient_id == patient_id)
        with self.session() as session:
            if details is not None:
                self._save_details(session, patient_id, details, stamp)
            inserted = session.scalar(
                self._insert(Candidate)
                .values(
                    trial=trial,
                    patient_id=patient_id,
                    verdict=outcome,
                    status=outcome,
                    result=verdict,
                    as_of=as_of,
                    updated_at=stamp,
                    screened_at=stamp,
                    unknown_count=unknown,
                )
                .on_conflict_do_nothing(index_elements=["trial", "patient_id"])
                .returning(Candidate.id)
            )
            if inserted is not None:
                return CandidateChange(trial, patient_id, None, outcome)
            previous, status = session.execute(
                select(Candidate.verdict, Candidate.status).where(*key).with_for_update()
            ).one()
            if status in PRESCREEN_STATUSES:
                status = outcome  # a coordinator's decision (eligible, contacted...) stays
            session.execute(
                update(Candidate)
                .where(*key)
                .values(
                    verdict=outcome,
                    status=status,
                    result=verdict,
                    as_of=as_of,
                    updated_at=stamp,
                    screened_at=stamp,
                    unknown_count=unknown,
                )
            )
            return CandidateChange(trial, patient_id, previous, outcome)

    def _save_details(
        self, session: Session, patient_id: str, details: PatientDetails, stamp: datetime
    ) -> None:
        row = details_row(patient_id, details) | {"updated_at": stamp}
        insert = self._insert(PatientRecord).values(**row)
        session.execute(
            insert.on_conflict_do_update(
                index_elements=["patient_id"],
                set_={k: v for k, v in row.items() if k != "patient_id"},
            )
        )

    def candidates(
        self, trial: str | None, status: str | None, since: datetime | None, offset: int, limit: int
    ) -> list[Candidate]:
        query = select(Candidate).order_by(Candidate.updated_at.desc(), Candidate.id)
        if trial:
            query = query.where(Candidate.trial == trial)
        if status:
            query = query.where(Candidate.status == status)
        if since:
            query = query.where(Candidate.updated_at >= since)
        with self.session() as session:
            return list(session.scalars(query.offset(offset).limit(limit)))

    def candidate(self, candidate_id: int) -> Candidate | None:
        with self.session() as session:
            return session.get(Candidate, candidate_id)

    def set_candidate_status(self, candidate_id: int, status: str) -> None:
        with self.session() as session:
            session.execute(
                update(Candidate)
                .where(Candidate.id == candidate_id)
                .values(status=status, updated_at=now())
            )

    # --- alerts ---------------------------------------------------------------------------------

    def claim_alert(
        self, trial: str, patient_id: str, reached: str, channel: str, lease_seconds: float
    ) -> int | None:
        """Create the alert row, leased to the caller while it sends; None if it exists already
        (another run or replica has it)."""
        stamp = now()
        with self.session() as session:
            alert_id = session.scalar(
                self._insert(Alert)
                .values(
                    trial=trial,
                    patient_id=patient_id,
                    reached=reached,
                    channel=channel,
                    state="pending",
                    attempts=0,
                    created_at=stamp,
                    lease_until=stamp + timedelta(seconds=lease_seconds),
                )
                .on_conflict_do_nothing(
                    index_elements=["trial", "patient_id", "reached", "channel"]
                )
                .returning(Alert.id)
            )
            return int(alert_id) if alert_id is not None else None

    def claim_retry(self, alert_id: int, lease_seconds: float) -> bool:
        """Lease an unsent alert for one more attempt; False while another send is in flight
        (its lease has not expired) or once it was sent."""
        return AlertLeases(self, Alert).claim_retry(alert_id, lease_seconds)

    def renew_alert(self, alert_id: int, lease_seconds: float) -> bool:
        return AlertLeases(self, Alert).renew(alert_id, lease_seconds)

    def mark_alert(self, alert_id: int, state: str) -> None:
        """Record an attempt's outcome and end its lease."""
        AlertLeases(self, Alert).mark(alert_id, state)

    def unsent_alerts(self) -> list[Alert]:
        """Alerts not sent and not being sent (no live lease): those a retry may claim."""
        return AlertLeases(self, Alert).unsent()

    def alerts(self) -> list[Alert]:
        return AlertLeases(self, Alert).every()

    # --- debounced re-screening -----------------------------------------------------------------

    def queue(self, trial: str, patient_ids: set[str], window_seconds: float) -> None:
        """Ask for a re-screen; another notification within the window pushes it back."""
        if not patient_ids:
            return
        due = now() + timedelta(seconds=window_seconds)
        # Notifications arrive concurrently: one upsert, rows in a fixed order (no deadlock
        # between two transactions upserting overlapping sets on PostgreSQL).
        rows = [{"trial": trial, "patient_id": p, "due_at": due} for p in sorted(patient_ids)]
        insert = self._insert(PendingPatient)
        with self.session() as session:
            session.execute(
                insert.on_conflict_do_update(
                    index_elements=["trial", "patient_id"],
                    set_={"due_at": insert.excluded.due_at},
                ),
                rows,
            )

    def take_due(self) -> dict[str, list[str]]:
        """Remove and return the patients due: DELETE … RETURNING, so two replicas polling at
        once each get a patient at most once between them."""
        with self.session() as session:
            rows = session.execute(
                delete(PendingPatient)
                .where(PendingPatient.due_at <= now())
                .returning(PendingPatient.trial, PendingPatient.patient_id)
            ).all()
        taken: dict[str, list[str]] = {}
        for trial, patient_id in sorted(rows):
            taken.setdefault(trial, []).append(patient_id)
        return taken

    # --- write-back claims ----------------------------------------------------------------------

    def claim_writeback(
        self, trial: str, patient_id: str, owner: str, lease_seconds: float
    ) -> bool:
        """Claim the patient's write-back for ``owner``; False while another replica's claim
        is live. One upsert that takes the row over only when its lease has expired."""
        stamp = now()
        insert = self._insert(WriteBackClaim).values(
            trial=trial,
            patient_id=patient_id,
            owner=owner,
            lease_until=stamp + timedelta(seconds=lease_seconds),
        )
        with self.session() as session:
            got = session.scalar(
                insert.on_conflict_do_update(
                    index_elements=["trial", "patient_id"],
                    set_={
                        "owner": insert.excluded.owner,
                        "lease_until": insert.excluded.lease_until,
                    },
                    where=or_(WriteBackClaim.lease_until < stamp, WriteBackClaim.owner == owner),
                ).returning(WriteBackClaim.owner)
            )
            return got == owner

    def renew_writeback(
        self, trial: str, patient_ids: list[str], owner: str, lease_seconds: float
    ) -> bool:
        """Extend ``owner``'s claims; False if any of them was lost (expired and taken)."""
        if not patient_ids:
            return True
        with self.session() as session:
            result = session.execute(
                update(WriteBackClaim)
                .where(
                    WriteBackClaim.trial == trial,
                    WriteBackClaim.patient_id.in_(patient_ids),
                    WriteBackClaim.owner == owner,
                )
                .values(lease_until=now() + timedelta(seconds=lease_seconds))
            )
            return _changed(result) == len(set(patient_ids))

    def release_writeback(self, trial: str, patient_ids: list[str], owner: str) -> None:
        if not patient_ids:
            return
        with self.session() as session:
            session.execute(
                delete(WriteBackClaim).where(
                    WriteBackClaim.trial == trial,
                    WriteBackClaim.patient_id.in_(patient_ids),
                    WriteBackClaim.owner == owner,
                )
            )


def _changed(result: Any) -> int:
    """Rows an UPDATE or DELETE matched."""
    return int(cast(CursorResult[Any], result).rowcount)


def _lease_free(table: type[Alert] | type[VisitAlert] | type[Run], stamp: datetime) -> Any:
    """No live lease on the row: none was taken, or it has expired."""
    return or_(table.lease_until.is_(None), table.lease_until < stamp)


def _run_free_for(owner: str, stamp: datetime) -> Any:
    """A run ``owner`` may take: unclaimed, already its own, or its claim has expired."""
    return or_(Run.owner.is_(None), Run.owner == owner, _lease_free(Run, stamp))


AlertTable = TypeVar("AlertTable", Alert, VisitAlert)


class AlertLeases(Generic[AlertTable]):
    """The delivery lifecycle of one alert table (new-candidate alerts, visit alerts): a
    delivery holds a lease while it sends; a retry claims an unsent alert whose lease ran out;
    the outcome ends the lease."""

    def __init__(self, store: Store, table: type[AlertTable]) -> None:
        self.store = store
        self.table: type[AlertTable] = table

    def claim_retry(self, alert_id: int, lease_seconds: float) -> bool:
        table = self.table
        stamp = now()
        with self.store.session() as session:
            result = session.execute(
                update(table)
                .where(table.id == alert_id, table.state != "sent", _lease_free(table, stamp))
                .values(lease_until=stamp + timedelta(seconds=lease_seconds))
            )
            return _changed(result) == 1

    def renew(self, alert_id: int, lease_seconds: float) -> bool:
        table = self.table
        with self.store.session() as session:
            result = session.execute(
                update(table)
                .where(table.id == alert_id, table.lease_until.is_not(None))
                .values(lease_until=now() + timedelta(seconds=lease_seconds))
            )
            return _changed(result) == 1

    def mark(self, alert_id: int, state: str) -> None:
        table = self.table
        values: dict[str, Any] = {
            "state": state,
            "attempts": table.attempts + 1,
            "lease_until": None,
        }
        if state == "sent":
            values["sent_at"] = now()
        with self.store.session() as session:
            session.execute(update(table).where(table.id == alert_id).values(**values))

    def unsent(self) -> list[AlertTable]:
        table = self.table
        with self.store.session() as session:
            return list(
                session.scalars(
                    select(table)
                    .where(table.state != "sent", _lease_free(table, now()))
                    .order_by(table.id)
                )
            )

    def every(self) -> list[AlertTable]:
        with self.store.session() as session:
            return list(session.scalars(select(self.table).order_by(self.table.id)))
