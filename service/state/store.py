"""The service's state: SQLite by default (embedded), PostgreSQL for several replicas.

Every write is its own short transaction, so a crash loses at most the patient being worked on;
uniqueness constraints (one candidate per trial and patient, one alert per candidate, status and
channel) make repeated work harmless across restarts and replicas.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, delete, func, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.state.models import Alert, Candidate, PendingPatient, Run, RunPatient

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def now() -> datetime:
    """Naive UTC: the same on SQLite (no time zones) and PostgreSQL."""
    return datetime.now(UTC).replace(tzinfo=None)


def migrate(url: str) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

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


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        connect_args = (
            {"check_same_thread": False, "timeout": 30} if url.startswith("sqlite") else {}
        )
        self.engine: Engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()

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

    def runs_to_resume(self) -> list[Run]:
        with self.session() as session:
            rows = session.scalars(select(Run).where(Run.status.in_(("queued", "running"))))
            return list(rows)

    def select_patients(self, run_id: str, patient_ids: list[str]) -> None:
        """Record the run's patients once; a resumed run keeps the list it had."""
        with self.session() as session:
            known = session.scalar(
                select(func.count()).select_from(RunPatient).where(RunPatient.run_id == run_id)
            )
            if not known:
                session.add_all(RunPatient(run_id=run_id, patient_id=p) for p in patient_ids)
            total = known or len(patient_ids)
            session.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(status="running", total=total, updated_at=now())
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

    def finish_run(self, run_id: str, status: str, counts: dict[str, Any], error: str = "") -> None:
        with self.session() as session:
            session.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(status=status, counts=counts, error=error, updated_at=now())
            )

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

    def upsert_candidate(self, trial: str, verdict: dict[str, Any], as_of: str) -> CandidateChange:
        patient_id = verdict["patient"].removeprefix("Patient/")
        outcome = verdict["verdict"]
        with self.session() as session:
            row = session.scalar(
                select(Candidate).where(
                    Candidate.trial == trial, Candidate.patient_id == patient_id
                )
            )
            if row is None:
                session.add(
                    Candidate(
                        trial=trial,
                        patient_id=patient_id,
                        verdict=outcome,
                        status=outcome,
                        result=verdict,
                        as_of=as_of,
                        updated_at=now(),
                    )
                )
                return CandidateChange(trial, patient_id, None, outcome)
            previous = row.verdict
            row.verdict, row.result, row.as_of, row.updated_at = outcome, verdict, as_of, now()
            if row.status in ("candidate", "potential-candidate", "ineligible"):
                row.status = outcome  # a coordinator's decision (eligible, contacted...) stays
            return CandidateChange(trial, patient_id, previous, outcome)

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

    def claim_alert(self, trial: str, patient_id: str, reached: str, channel: str) -> int | None:
        """Create the alert row; None if it exists already (another run or replica has it)."""
        try:
            with self.session() as session:
                alert = Alert(
                    trial=trial,
                    patient_id=patient_id,
                    reached=reached,
                    channel=channel,
                    state="pending",
                    attempts=0,
                    created_at=now(),
                )
                session.add(alert)
                session.flush()
                return int(alert.id)
        except IntegrityError:
            return None

    def mark_alert(self, alert_id: int, state: str) -> None:
        with self.session() as session:
            values: dict[str, Any] = {"state": state, "attempts": Alert.attempts + 1}
            if state == "sent":
                values["sent_at"] = now()
            session.execute(update(Alert).where(Alert.id == alert_id).values(**values))

    def unsent_alerts(self) -> list[Alert]:
        with self.session() as session:
            return list(session.scalars(select(Alert).where(Alert.state != "sent")))

    def alerts(self) -> list[Alert]:
        with self.session() as session:
            return list(session.scalars(select(Alert).order_by(Alert.id)))

    # --- debounced re-screening -----------------------------------------------------------------

    def queue(self, trial: str, patient_ids: set[str], window_seconds: float) -> None:
        """Ask for a re-screen; another notification within the window pushes it back."""
        due = now() + timedelta(seconds=window_seconds)
        for patient_id in patient_ids:
            # Notifications arrive concurrently: insert, and if another got there first, update.
            try:
                with self.session() as session:
                    session.add(PendingPatient(trial=trial, patient_id=patient_id, due_at=due))
            except IntegrityError:
                with self.session() as session:
                    session.execute(
                        update(PendingPatient)
                        .where(
                            PendingPatient.trial == trial, PendingPatient.patient_id == patient_id
                        )
                        .values(due_at=due)
                    )

    def take_due(self) -> dict[str, list[str]]:
        with self.session() as session:
            rows = list(
                session.scalars(select(PendingPatient).where(PendingPatient.due_at <= now()))
            )
            for row in rows:
                session.execute(
                    delete(PendingPatient).where(
                        PendingPatient.trial == row.trial,
                        PendingPatient.patient_id == row.patient_id,
                    )
                )
        taken: dict[str, list[str]] = {}
        for row in rows:
            taken.setdefault(row.trial, []).append(row.patient_id)
        return taken
