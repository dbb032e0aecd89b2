"""Tables of the service's state (SQLAlchemy 2). The schema is created by Alembic migrations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Run(Base):
    """A population run: selected patients, progress, and how it ended."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    trial: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))  # fhir | ndjson
    source_detail: Mapped[str] = mapped_column(Text, default="")
    as_of: Mapped[str] = mapped_column(String(10))
    write_back: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16))  # queued | running | done | failed
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime())
    updated_at: Mapped[datetime] = mapped_column(DateTime())


class RunPatient(Base):
    """One patient of a run; ``verdict`` is set once screened (and written back)."""

    __tablename__ = "run_patients"

    run_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    verdict: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Candidate(Base):
    """The latest result of a patient for a trial, and what coordinators decided."""

    __tablename__ = "candidates"
    __table_args__ = (UniqueConstraint("trial", "patient_id", name="uq_candidate"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trial: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))
    verdict: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32))  # ResearchSubject status (decisions land here)
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    as_of: Mapped[str] = mapped_column(String(10))
    updated_at: Mapped[datetime] = mapped_column(DateTime())


class Alert(Base):
    """One alert per candidate, status reached and channel: the unique key makes it once only."""

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint("trial", "patient_id", "reached", "channel", name="uq_alert"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trial: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))
    reached: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))  # pending | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime())
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)


class PendingPatient(Base):
    """Patients to re-screen after a notification, due once the debounce window has passed."""

    __tablename__ = "pending_patients"

    trial: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    due_at: Mapped[datetime] = mapped_column(DateTime())
