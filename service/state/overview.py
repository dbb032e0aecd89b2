"""What the overview reads besides the worklist's counts: how many patients the source held
(the latest finished population run of each trial), when each trial was last screened, and the
patients each step of a trial's funnel ruled out."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.state.models import Candidate, PatientRecord, Run, VerdictEvent


@dataclass(frozen=True)
class SourceSize:
    """The patients a finished run found in its source: the folder's patients (NDJSON), the
    cohort the FHIR server returned, or the patients a run was given by id."""

    patients: int
    kind: str  # folder | cohort | listed
    finished_at: datetime


@dataclass(frozen=True)
class ScreenedPatient:
    candidate_id: int
    patient_id: str
    status: str
    verdict: str
    result: dict[str, Any]
    details: PatientRecord | None


class OverviewStore:
    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def _session(self) -> Session:
        return self._sessions()

    def source_sizes(self) -> dict[str, SourceSize]:
        """{trial: its latest finished run's patients}."""
        latest = (
            select(Run.trial, func.max(Run.updated_at).label("at"))
            .where(Run.status == "done")
            .group_by(Run.trial)
            .subquery()
        )
        sizes: dict[str, SourceSize] = {}
        with self._session() as session:
            for run in session.scalars(
                select(Run).join(
                    latest, (Run.trial == latest.c.trial) & (Run.updated_at == latest.c.at)
                )
            ):
                if run.source == "ndjson":
                    kind = "folder"
                else:
                    kind = "listed" if run.source_detail.strip(",") else "cohort"
                sizes[run.trial] = SourceSize(run.total, kind, run.updated_at)
        return sizes

    def last_screened(self) -> dict[str, datetime]:
        """{trial: when its rules last ran for a patient}."""
        with self._session() as session:
            return {
                trial: at
                for trial, at in session.execute(
                    select(
                        Candidate.trial,
                        func.max(func.coalesce(Candidate.screened_at, Candidate.updated_at)),
                    ).group_by(Candidate.trial)
                )
                if at is not None
            }

    def distinct_patients(self) -> int:
        with self._session() as session:
            return int(session.scalar(select(func.count(func.distinct(Candidate.patient_id)))) or 0)

    def results(self, trial: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """(patient id, verdict, verdict line) of every screened patient of a trial, by patient
        id, a thousand rows at a time."""
        with self._session() as session:
            rows = session.execute(
                select(Candidate.patient_id, Candidate.verdict, Candidate.result)
                .where(Candidate.trial == trial)
                .order_by(Candidate.patient_id)
                .execution_options(yield_per=1000)
            )
            for pid, verdict, result in rows:
                yield pid, verdict, result or {}

    def screened(self, trial: str, patient_ids: list[str]) -> list[ScreenedPatient]:
        """These patients of a trial, with who they are, by patient id."""
        with self._session() as session:
            rows = session.execute(
                select(
                    Candidate.id,
                    Candidate.patient_id,
                    Candidate.status,
                    Candidate.verdict,
                    Candidate.result,
                    PatientRecord,
                )
                .outerjoin(PatientRecord, PatientRecord.patient_id == Candidate.patient_id)
                .where(Candidate.trial == trial, Candidate.patient_id.in_(patient_ids))
                .order_by(Candidate.patient_id)
            )
            return [
                ScreenedPatient(cid, pid, status, verdict, result or {}, details)
                for cid, pid, status, verdict, result, details in rows
            ]

    def candidates_first_flagged(self, trial: str) -> list[datetime]:
        """For each of today's candidates of a trial: when it was first a candidate (its
        earliest verdict change to candidate)."""
        with self._session() as session:
            return [
                at
                for (at,) in session.execute(
                    select(func.min(VerdictEvent.at))
                    .join(Candidate, Candidate.id == VerdictEvent.candidate_id)
                    .where(
                        Candidate.trial == trial,
                        Candidate.verdict == "candidate",
                        VerdictEvent.verdict == "candidate",
                    )
                    .group_by(VerdictEvent.candidate_id)
                )
                if at is not None
            ]
