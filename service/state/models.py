"""Tables of the service's state (SQLAlchemy 2). The schema is created by Alembic migrations."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Date, DateTime, Index, Integer, String, Text, UniqueConstraint
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
    # NDJSON runs: input issues by kind (line-too-long...), as a screening reports them.
    input_issues: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime())
    updated_at: Mapped[datetime] = mapped_column(DateTime())
    # The replica executing the run, until lease_until (renewed while it runs): another replica
    # takes the run over only once the lease has expired.
    owner: Mapped[str | None] = mapped_column(String(40), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)


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
    # When the rules last ran for it (migration 0007; a decision moves updated_at, not this).
    screened_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    # Criteria of the result still unknown (clinician review included): the worklist sorts by it.
    unknown_count: Mapped[int] = mapped_column(Integer, default=0)


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
    # Set while a delivery is in flight (renewed until it ends): retries leave the alert alone.
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)


class PendingPatient(Base):
    """Patients to re-screen after a notification, due once the debounce window has passed."""

    __tablename__ = "pending_patients"

    trial: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    due_at: Mapped[datetime] = mapped_column(DateTime())


class WriteBackClaim(Base):
    """A replica writing a patient's results back for a trial, until lease_until (renewed while
    it writes): one write-back per patient at a time, across replicas."""

    __tablename__ = "writeback_claims"

    trial: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(40))
    lease_until: Mapped[datetime] = mapped_column(DateTime())


# --- the web worklist (migration 0004) ----------------------------------------------------------


class WebUser(Base):
    """A person who may sign in to the web worklist: roles (service.roles), the trials they
    decide on, a password hash in the local-users mode, and the identity-provider account
    (issuer and subject, migration 0005) that signs in as them in the OIDC mode."""

    __tablename__ = "web_users"
    # One local user per identity-provider account (NULLs, not linked, are never equal).
    __table_args__ = (Index("uq_web_users_identity", "oidc_issuer", "oidc_subject", unique=True),)

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    role: Mapped[str] = mapped_column(String(64))  # comma-separated roles (service.roles)
    trials: Mapped[str] = mapped_column(Text, default="")  # comma-separated; empty: every trial
    password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    oidc_issuer: Mapped[str | None] = mapped_column(String(255), nullable=True)
    oidc_subject: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime())
    updated_at: Mapped[datetime] = mapped_column(DateTime())


class WebSession(Base):
    """A signed-in browser. Only a hash of the session id is kept, so a copy of the database
    cannot be replayed as a cookie; signing out deletes the row."""

    __tablename__ = "web_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_name: Mapped[str] = mapped_column(String(128), index=True)
    role: Mapped[str] = mapped_column(String(64))  # comma-separated roles
    trials: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime())
    expires_at: Mapped[datetime] = mapped_column(DateTime())


class SignInFailures(Base):
    """Failed sign-ins of one user name or one client address (``key``: a hash of which) in
    the current window, and until when the next try is refused (migration 0005). In the
    database, so every replica counts the same failures."""

    __tablename__ = "sign_in_failures"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[datetime] = mapped_column(DateTime())
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)


class DecisionRecord(Base):
    """One coordinator decision as it was written to the ResearchSubject: who, when, what, why."""

    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    candidate_id: Mapped[int] = mapped_column(Integer, index=True)
    trial: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    previous_status: Mapped[str] = mapped_column(String(32), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    note: Mapped[str] = mapped_column(Text, default="")
    decided_by: Mapped[str] = mapped_column(String(128))
    subject_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    decided_at: Mapped[datetime] = mapped_column(DateTime())


class VerdictEvent(Base):
    """A verdict, or a criterion's result, that changed for a candidate (or its first one)."""

    __tablename__ = "verdict_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    candidate_id: Mapped[int] = mapped_column(Integer, index=True)
    trial: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))
    verdict: Mapped[str] = mapped_column(String(32))
    results: Mapped[dict[str, Any]] = mapped_column(JSON)  # {criterion id: met|not_met|unknown}
    at: Mapped[datetime] = mapped_column(DateTime())


class SeenMark(Base):
    """What a person last saw of a candidate, so the worklist can show what changed since."""

    __tablename__ = "seen_marks"

    user_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    candidate_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    verdict: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32))
    results: Mapped[dict[str, Any]] = mapped_column(JSON)
    seen_at: Mapped[datetime] = mapped_column(DateTime())


# --- who the patients are, drafts, exports (migration 0006) ------------------------------------


class PatientRecord(Base):
    """Who a screened patient is, for the people who read the worklist: name, medical record
    number, birth date and sex as the mapping's display section read them at the last
    screening. The ``*_key`` columns are the same words folded for search (case, accents)."""

    __tablename__ = "patient_details"

    patient_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    name_key: Mapped[str] = mapped_column(String(200), default="")
    mrn: Mapped[str] = mapped_column(String(200), default="")
    mrn_key: Mapped[str] = mapped_column(String(200), default="", index=True)
    birth_date: Mapped[str] = mapped_column(String(10), default="")
    sex: Mapped[str] = mapped_column(String(32), default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime())


class DecisionDraft(Base):
    """A decision someone sent after their session had ended (signed out elsewhere, expired):
    kept until they have signed in again and sent it, found by the hash of a random key their
    browser's cookie holds, offered back to its author only, and deleted once sent or after a
    day."""

    __tablename__ = "decision_drafts"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    author: Mapped[str] = mapped_column(String(128))  # whose session had ended
    patient_id: Mapped[str] = mapped_column(String(64))
    trial: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    note: Mapped[str] = mapped_column(Text, default="")
    expected_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(), index=True)


class ExportRecord(Base):
    """A screening log downloaded: who, when, through which door, with which filters."""

    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    exported_by: Mapped[str] = mapped_column(String(128))
    via: Mapped[str] = mapped_column(String(8))  # ui | api
    filters: Mapped[dict[str, Any]] = mapped_column(JSON)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    exported_at: Mapped[datetime] = mapped_column(DateTime(), index=True)


# --- the access audit (migration 0007) ---------------------------------------------------------


class AccessEvent(Base):
    """One access to patient data: a patient page viewed, a decision recorded, a list exported.
    Who (the person or API client), when, what (the patient, or the filters of an export), from
    which client address and through which door; and, when the audit is also sent to the FHIR
    server as an AuditEvent, where that stands (``fhir_state``: "" not sent there, pending,
    sent, failed after the last try; tries, the next try's time and the last error's kind)."""

    __tablename__ = "access_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(), index=True)
    user_name: Mapped[str] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(16))  # view | decision | export
    via: Mapped[str] = mapped_column(String(8))  # ui | api
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    trial: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)  # filters, status decided, rows
    client_address: Mapped[str] = mapped_column(String(64), default="")
    fhir_state: Mapped[str] = mapped_column(String(8), default="", index=True)
    fhir_tries: Mapped[int] = mapped_column(Integer, default=0)
    fhir_next_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    fhir_error: Mapped[str] = mapped_column(String(64), default="")  # an error kind, no message
    # The AuditEvent's id on the FHIR server (written with PUT: a retry never duplicates it).
    uuid: Mapped[str] = mapped_column(String(36), unique=True)


# --- follow-up (migration 0007) ----------------------------------------------------------------


class FollowUp(Base):
    """What people keep about a row besides its status: who follows it up and when, and a
    person's flag for review of a patient the rules exclude (recorded beside the verdict; it
    changes neither the verdict nor the ResearchSubject)."""

    __tablename__ = "follow_ups"

    candidate_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignee: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    follow_up_on: Mapped[date | None] = mapped_column(Date(), nullable=True, index=True)
    review_reason: Mapped[str] = mapped_column(Text, default="")
    review_note: Mapped[str] = mapped_column(Text, default="")
    review_by: Mapped[str] = mapped_column(String(128), default="")
    review_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime())


class Activity(Base):
    """Something a person did on a row other than a decision: a note, an assignment, a
    follow-up date, a flag for review. With the decisions, it is the row's history, and what
    "changed since you looked" names."""

    __tablename__ = "activities"
    __table_args__ = (Index("ix_activities_candidate_id_at", "candidate_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    candidate_id: Mapped[int] = mapped_column(Integer)
    who: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))  # note | assign | follow-up | review
    detail: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(DateTime())


# --- CDS Hooks (migration 0002) -----------------------------------------------------------------


class CdsTokenUse(Base):
    """A CDS Hooks JWT already presented, kept until it expires: a second use is a replay.
    ``key`` is a hash of the issuer and the jti (fixed length, whatever the EHR sends)."""

    __tablename__ = "cds_token_uses"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(), index=True)


class CdsCard(Base):
    """A card prescreen returned to an EHR: feedback names it by uuid."""

    __tablename__ = "cds_cards"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    trial: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str] = mapped_column(String(255))  # the EHR (JWT iss) the card went to
    issued_at: Mapped[datetime] = mapped_column(DateTime(), index=True)


class CdsFeedback(Base):
    """What a clinician did with a card (CDS Hooks feedback): accepted or overridden, and why.
    The same report sent twice is kept once."""

    __tablename__ = "cds_feedback"
    __table_args__ = (
        UniqueConstraint("card_uuid", "outcome", "outcome_at", name="uq_cds_feedback"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    card_uuid: Mapped[str] = mapped_column(String(36), index=True)
    trial: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))  # accepted | overridden
    accepted_suggestions: Mapped[list[str]] = mapped_column(JSON)
    override_reason: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    outcome_at: Mapped[datetime] = mapped_column(DateTime())
    received_at: Mapped[datetime] = mapped_column(DateTime())


class ClinicDay(Base):
    """The daily clinic screening of one day (the date it ran for, in the clinic's zone): claimed
    by one replica at a time under a lease, done once."""

    __tablename__ = "clinic_days"

    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # running | done
    owner: Mapped[str] = mapped_column(String(40))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class VisitAlert(Base):
    """One alert per (trial, patient, appointment, channel): a coordinator hears of a candidate
    before each visit once, however often the schedule screens it."""

    __tablename__ = "visit_alerts"
    __table_args__ = (
        UniqueConstraint("trial", "patient_id", "appointment_id", "channel", name="uq_visit_alert"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trial: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))
    appointment_id: Mapped[str] = mapped_column(String(64))
    appointment_date: Mapped[str] = mapped_column(String(10))
    reached: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))  # pending | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime())
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
