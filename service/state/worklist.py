"""The web worklist's state: people and their sessions, the history of verdicts and decisions,
and what each person last saw of each candidate.

The candidates themselves stay in :mod:`service.state.store`; this module reads them and keeps
what a person needs around them. The verdict history (``verdict_events``) is written by database
triggers on ``candidates`` (migration 0004), whatever code path, process or replica screened the
patient, so it cannot miss a screening.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    and_,
    case,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, aliased, sessionmaker

from service.roles import Access
from service.state.models import (
    Activity,
    Candidate,
    DecisionDraft,
    DecisionRecord,
    ExportRecord,
    FollowUp,
    PatientRecord,
    SeenMark,
    VerdictEvent,
    WebSession,
    WebUser,
)
from service.state.patients import fold_identifier, like_pattern, query_words
from service.state.store import now

# prescreen's own verdicts that put a patient on a coordinator's list.
FLAGGED = ("candidate", "potential-candidate")
DRAFT_HOURS = 24  # a decision kept for its author to sign in again is kept this long
# The worklist's columns a person may sort by.
SORTS = (
    "patient",
    "trial",
    "verdict",
    "status",
    "flagged",
    "to_check",
    "change",
    "assignee",
    "follow_up",
)
# Statuses sorted in the order a patient moves through them (then any other, by name).
STATUS_ORDER = (
    "candidate",
    "potential-candidate",
    "eligible",
    "screening",
    "pending-on-study",
    "on-study",
    "not-registered",
    "withdrawn",
    "ineligible",
)
VERDICT_ORDER = ("candidate", "potential-candidate", "ineligible")


class IdentityTakenError(Exception):
    """The identity-provider account is linked to another person already."""

    def __init__(self, other: str) -> None:
        self.other = other
        super().__init__(f"that account is linked to {other} already")


def normal_issuer(issuer: str) -> str:
    """Issuers compared without a trailing slash (``https://idp/`` is ``https://idp``)."""
    return issuer.strip().rstrip("/")


def criterion_results(result: dict[str, Any] | None) -> dict[str, str]:
    """{criterion id: met|not_met|unknown} of a verdict line."""
    criteria = (result or {}).get("criteria") or {}
    return {cid: str(c.get("result", "")) for cid, c in criteria.items() if isinstance(c, dict)}


# --- reading and writing ----------------------------------------------------------------------


@dataclass(frozen=True)
class WorklistRow:
    candidate: Candidate
    flagged_at: datetime
    change: str  # "new" (never opened by this person), "changed" (since they did) or ""
    seen: SeenMark | None
    patient: PatientRecord | None = None  # who the patient is (None: not read yet)
    follow: FollowUp | None = None  # assignment, follow-up date, flag for review (None: none)


@dataclass(frozen=True)
class WorklistFilters:
    """What a worklist (a page of it, or the whole of it as a screening log) holds."""

    trials: list[str]
    statuses: list[str]
    since: datetime | None = None
    changed_only: bool = False  # new or changed (the same as show="either")
    newest_first: bool = True
    patient_ids: list[str] | None = None  # a search's patients (None: every patient)
    show: str = ""  # "" every row, "new", "changed" (since this person looked) or "either"
    assignee: str | None = None  # rows assigned to this person ("": to nobody; None: any)
    due_by: date | None = None  # rows with a follow-up date on or before this day
    review_only: bool = False  # rows a person flagged for review
    with_review: bool = False  # rows flagged for review are kept whatever their status
    sort: str = "flagged"  # one of SORTS
    descending: bool = True


@dataclass(frozen=True)
class LogRow:
    """One line of the screening log: a patient and a trial, and the decision behind the status
    (when the status is a decision recorded here)."""

    trial: str
    patient_id: str
    name: str
    mrn: str
    birth_date: str
    sex: str
    verdict: str
    status: str
    as_of: str
    flagged_at: datetime
    decided_at: datetime | None
    decided_by: str
    reason: str
    assignee: str = ""
    follow_up_on: date | None = None
    review_reason: str = ""
    review_by: str = ""
    review_at: datetime | None = None


@dataclass(frozen=True)
class Change:
    """Something someone else did to a row since a person last looked at it."""

    at: datetime
    who: str
    kind: str  # decision | note | assign | follow-up | review
    what: str  # the status decided, or the activity's detail
    before: str = ""  # a decision's previous status


@dataclass(frozen=True)
class WorklistPage:
    rows: list[WorklistRow]
    total: int
    new: int
    changed: int


@dataclass(frozen=True)
class HistoryEntry:
    at: datetime
    kind: str  # verdict | decision | note | assign | follow-up | review
    what: str  # the verdict or status
    who: str
    reason: str = ""
    note: str = ""
    changes: tuple[tuple[str, str, str], ...] = ()  # (criterion, before, after)


def session_id_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class WorklistStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    # --- people ---------------------------------------------------------------------------------

    def save_user(
        self,
        name: str,
        access: Access,
        password_hash: str | None,
        identity: tuple[str, str] | None = None,
    ) -> None:
        """Create or replace a person; their open sessions end (their rights may have changed).
        ``identity`` (issuer, subject) links them to an identity-provider account; without it
        a person replaced keeps the account they were linked to."""
        if not access.roles:
            raise ValueError("a person needs at least one role")
        stamp = now()
        with self.session() as session:
            if identity is not None:
                self._check_identity_free(session, name, identity)
            user = session.get(WebUser, name)
            if user is None:
                user = WebUser(name=name, created_at=stamp)
                session.add(user)
            user.role, user.trials, user.updated_at = access.roles_text, access.trials_text, stamp
            user.password_hash = password_hash
            if identity is not None:
                user.oidc_issuer, user.oidc_subject = normal_issuer(identity[0]), identity[1]
            session.execute(delete(WebSession).where(WebSession.user_name == name))

    def link_user(self, name: str, issuer: str, subject: str) -> bool:
        """Link an existing person to an identity-provider account; False if there is no such
        person. Their open sessions end."""
        with self.session() as session:
            user = session.get(WebUser, name)
            if user is None:
                return False
            self._check_identity_free(session, name, (issuer, subject))
            user.oidc_issuer, user.oidc_subject = normal_issuer(issuer), subject
            user.updated_at = now()
            session.execute(delete(WebSession).where(WebSession.user_name == name))
            return True

    @staticmethod
    def _check_identity_free(session: Session, name: str, identity: tuple[str, str]) -> None:
        other = session.scalar(
            select(WebUser.name).where(
                WebUser.oidc_issuer == normal_issuer(identity[0]),
                WebUser.oidc_subject == identity[1],
                WebUser.name != name,
            )
        )
        if other is not None:
            raise IdentityTakenError(other)

    def user_by_identity(self, issuer: str, subject: str) -> WebUser | None:
        """The person linked to this identity-provider account, if any."""
        with self.session() as session:
            return session.scalar(
                select(WebUser).where(
                    WebUser.oidc_issuer == normal_issuer(issuer), WebUser.oidc_subject == subject
                )
            )

    def remove_user(self, name: str) -> bool:
        with self.session() as session:
            session.execute(delete(WebSession).where(WebSession.user_name == name))
            user = session.get(WebUser, name)
            if user is None:
                return False
            session.delete(user)
            return True

    def user(self, name: str) -> WebUser | None:
        with self.session() as session:
            return session.get(WebUser, name)

    def users(self) -> list[WebUser]:
        with self.session() as session:
            return list(session.scalars(select(WebUser).order_by(WebUser.name)))

    # --- sessions -------------------------------------------------------------------------------

    def open_session(self, user_name: str, access: Access, hours: float) -> str:
        """A new signed-in session; returns the random id the cookie carries (kept hashed)."""
        raw = secrets.token_urlsafe(32)
        stamp = now()
        with self.session() as session:
            session.execute(delete(WebSession).where(WebSession.expires_at <= stamp))
            session.add(
                WebSession(
                    id_hash=session_id_hash(raw),
                    user_name=user_name,
                    role=access.roles_text,
                    trials=access.trials_text,
                    created_at=stamp,
                    expires_at=stamp + timedelta(hours=hours),
                )
            )
        return raw

    def find_session(self, raw: str) -> WebSession | None:
        with self.session() as session:
            found = session.get(WebSession, session_id_hash(raw))
            if found is None or found.expires_at <= now():
                return None
            return found

    def close_session(self, raw: str) -> None:
        with self.session() as session:
            session.execute(delete(WebSession).where(WebSession.id_hash == session_id_hash(raw)))

    # --- decisions ------------------------------------------------------------------------------

    def record_decision(
        self,
        candidate: Candidate,
        status: str,
        previous_status: str,
        decided_by: str,
        reason: str,
        note: str,
        subject_version: str | None,
    ) -> None:
        with self.session() as session:
            session.add(
                DecisionRecord(
                    candidate_id=candidate.id,
                    trial=candidate.trial,
                    patient_id=candidate.patient_id,
                    status=status,
                    previous_status=previous_status,
                    reason=reason,
                    note=note,
                    decided_by=decided_by,
                    subject_version=subject_version,
                    decided_at=now(),
                )
            )

    def last_decision(self, candidate_id: int) -> DecisionRecord | None:
        with self.session() as session:
            return session.scalar(
                select(DecisionRecord)
                .where(DecisionRecord.candidate_id == candidate_id)
                .order_by(DecisionRecord.decided_at.desc(), DecisionRecord.id.desc())
                .limit(1)
            )

    def history(self, candidate_id: int) -> list[HistoryEntry]:
        """Verdicts and decisions of one candidate, newest first."""
        with self.session() as session:
            events = list(
                session.scalars(
                    select(VerdictEvent)
                    .where(VerdictEvent.candidate_id == candidate_id)
                    .order_by(VerdictEvent.at, VerdictEvent.id)
                )
            )
            decisions = list(
                session.scalars(
                    select(DecisionRecord).where(DecisionRecord.candidate_id == candidate_id)
                )
            )
            activities = list(
                session.scalars(select(Activity).where(Activity.candidate_id == candidate_id))
            )
        entries: list[HistoryEntry] = []
        before: dict[str, str] = {}
        for item in events:
            changes = tuple(
                (cid, before.get(cid, ""), result)
                for cid, result in item.results.items()
                if before and before.get(cid) != result
            )
            entries.append(
                HistoryEntry(item.at, "verdict", item.verdict, "prescreen", changes=changes)
            )
            before = item.results or before
        entries += [
            HistoryEntry(d.decided_at, "decision", d.status, d.decided_by, d.reason, d.note)
            for d in decisions
        ]
        entries += [HistoryEntry(a.at, a.kind, a.detail, a.who) for a in activities]
        return sorted(entries, key=lambda e: e.at, reverse=True)

    # --- follow-up: notes, assignment, follow-up date, flag for review ------------------------

    def add_note(self, candidate_id: int, who: str, text: str) -> None:
        """A note on a row, without a change of status."""
        with self.session() as session:
            session.add(
                Activity(candidate_id=candidate_id, who=who, kind="note", detail=text, at=now())
            )

    def follow_up(self, candidate_id: int) -> FollowUp | None:
        with self.session() as session:
            return session.get(FollowUp, candidate_id)

    def _follow_up_row(self, session: Session, candidate_id: int) -> FollowUp:
        found = session.get(FollowUp, candidate_id)
        if found is None:
            found = FollowUp(candidate_id=candidate_id, updated_at=now())
            session.add(found)
        return found

    def set_follow_up(
        self, candidate_id: int, who: str, assignee: str | None, follow_up_on: date | None
    ) -> list[str]:
        """Assign the row (None: to nobody) and set its follow-up date (None: none); returns
        what changed, in words, each also kept in the row's history."""
        stamp = now()
        changed: list[str] = []
        with self.session() as session:
            row = self._follow_up_row(session, candidate_id)
            if (row.assignee or None) != (assignee or None):
                row.assignee = assignee or None
                changed.append(f"assigned to {assignee}" if assignee else "unassigned")
                session.add(
                    Activity(
                        candidate_id=candidate_id,
                        who=who,
                        kind="assign",
                        detail=changed[-1],
                        at=stamp,
                    )
                )
            if row.follow_up_on != follow_up_on:
                row.follow_up_on = follow_up_on
                changed.append(
                    f"follow up on {follow_up_on.isoformat()}"
                    if follow_up_on
                    else "no follow-up date"
                )
                session.add(
                    Activity(
                        candidate_id=candidate_id,
                        who=who,
                        kind="follow-up",
                        detail=changed[-1],
                        at=stamp,
                    )
                )
            row.updated_at = stamp
        return changed

    def flag_for_review(
        self, candidate_id: int, who: str, reason: str, note: str, clear: bool = False
    ) -> None:
        """A person's flag for review of a patient the rules exclude (or its withdrawal): kept
        beside the verdict, which it never changes."""
        stamp = now()
        with self.session() as session:
            row = self._follow_up_row(session, candidate_id)
            row.review_reason, row.review_note = ("", "") if clear else (reason, note)
            row.review_by, row.review_at = ("", None) if clear else (who, stamp)
            row.updated_at = stamp
            detail = "flag for review withdrawn" if clear else f"flagged for review: {reason}"
            if note and not clear:
                detail += f" ({note})"
            session.add(
                Activity(candidate_id=candidate_id, who=who, kind="review", detail=detail, at=stamp)
            )

    def changes_since_seen(
        self, user_name: str, rows: list[WorklistRow]
    ) -> dict[int, list[Change]]:
        """What other people did to each "changed" row since this person last opened it (or
        ever, if they never did), oldest first."""
        since = {
            r.candidate.id: (r.seen.seen_at if r.seen else None)
            for r in rows
            if r.change == "changed"
        }
        found: dict[int, list[Change]] = {cid: [] for cid in since}
        if not since:
            return found
        with self.session() as session:
            decisions = session.scalars(
                select(DecisionRecord).where(
                    DecisionRecord.candidate_id.in_(since), DecisionRecord.decided_by != user_name
                )
            )
            for d in decisions:
                after = since[d.candidate_id]
                if after is None or d.decided_at > after:
                    found[d.candidate_id].append(
                        Change(d.decided_at, d.decided_by, "decision", d.status, d.previous_status)
                    )
            for a in session.scalars(
                select(Activity).where(Activity.candidate_id.in_(since), Activity.who != user_name)
            ):
                after = since[a.candidate_id]
                if after is None or a.at > after:
                    found[a.candidate_id].append(Change(a.at, a.who, a.kind, a.detail))
        for changes in found.values():
            changes.sort(key=lambda c: c.at)
        return found

    # --- what a person has seen -----------------------------------------------------------------

    def mark_seen(self, user_name: str, candidates: list[Candidate]) -> None:
        stamp = now()
        with self.session() as session:
            for candidate in candidates:
                mark = session.get(SeenMark, (user_name, candidate.id))
                if mark is None:
                    mark = SeenMark(user_name=user_name, candidate_id=candidate.id)
                    session.add(mark)
                mark.verdict, mark.status = candidate.verdict, candidate.status
                mark.results = criterion_results(candidate.result)
                mark.seen_at = stamp

    # --- the worklist ---------------------------------------------------------------------------

    def _selection(self, user_name: str, filters: WorklistFilters) -> Any:
        """The candidates the filters keep, with when each was flagged and whether it is new or
        changed for this person: a callable that completes a SELECT with the joins and the
        conditions, and the columns it adds."""
        # One pass over the verdict history: when each row was first flagged, and last changed.
        events = (
            select(
                VerdictEvent.candidate_id,
                func.min(
                    case((VerdictEvent.verdict.in_(FLAGGED), VerdictEvent.at), else_=None)
                ).label("flagged_at"),
                func.max(VerdictEvent.at).label("at"),
            )
            .group_by(VerdictEvent.candidate_id)
            .subquery()
        )
        flagged = last_event = events
        # What other people did: decisions, notes, assignments, dates, flags.
        done_by_others = union_all(
            select(
                DecisionRecord.candidate_id.label("candidate_id"),
                DecisionRecord.decided_at.label("at"),
            ).where(DecisionRecord.decided_by != user_name),
            select(Activity.candidate_id.label("candidate_id"), Activity.at.label("at")).where(
                Activity.who != user_name
            ),
        ).subquery()
        others = (
            select(done_by_others.c.candidate_id, func.max(done_by_others.c.at).label("at"))
            .group_by(done_by_others.c.candidate_id)
            .subquery()
        )
        mark = aliased(SeenMark)
        follow = aliased(FollowUp)
        flagged_at = func.coalesce(flagged.c.flagged_at, Candidate.updated_at)
        # New: nobody has opened it yet. Changed: since this person opened it, it was
        # re-screened or someone else acted on it; or, never opened by them, someone else did.
        is_new = ~exists().where(SeenMark.candidate_id == Candidate.id)
        is_changed = and_(
            ~is_new,
            or_(
                and_(
                    mark.candidate_id.is_not(None),
                    or_(last_event.c.at > mark.seen_at, others.c.at > mark.seen_at),
                ),
                and_(mark.candidate_id.is_(None), others.c.at.is_not(None)),
            ),
        )
        conditions: list[Any] = []
        if filters.trials:
            conditions.append(Candidate.trial.in_(filters.trials))
        if filters.statuses:
            by_status = Candidate.status.in_(filters.statuses)
            conditions.append(
                or_(by_status, follow.review_at.is_not(None)) if filters.with_review else by_status
            )
        if filters.since is not None:
            conditions.append(flagged_at >= filters.since)
        show = filters.show or ("either" if filters.changed_only else "")
        if show == "new":
            conditions.append(is_new)
        elif show == "changed":
            conditions.append(is_changed)
        elif show == "either":
            conditions.append(or_(is_new, is_changed))
        if filters.assignee == "":
            conditions.append(follow.assignee.is_(None))
        elif filters.assignee is not None:
            conditions.append(follow.assignee == filters.assignee)
        if filters.due_by is not None:
            conditions.append(follow.follow_up_on <= filters.due_by)
        if filters.review_only:
            conditions.append(follow.review_at.is_not(None))
        if filters.patient_ids is not None:
            conditions.append(Candidate.patient_id.in_(filters.patient_ids))

        def joined(query: Any) -> Any:
            return (
                query.select_from(Candidate)
                .outerjoin(events, events.c.candidate_id == Candidate.id)
                .outerjoin(others, others.c.candidate_id == Candidate.id)
                .outerjoin(
                    mark, and_(mark.candidate_id == Candidate.id, mark.user_name == user_name)
                )
                .outerjoin(follow, follow.candidate_id == Candidate.id)
                .where(*conditions)
            )

        order = self._order(filters, flagged_at, is_new, is_changed, follow)
        return joined, flagged_at, is_new, is_changed, mark, follow, order

    def _order(
        self, filters: WorklistFilters, flagged_at: Any, is_new: Any, is_changed: Any, follow: Any
    ) -> tuple[Any, ...]:
        """The sort a person chose, then newest flagged first and the row id: the same rows
        always come in the same order, page after page."""
        descending = filters.descending and filters.newest_first
        sort = filters.sort if filters.sort in SORTS else "flagged"

        def ranked(values: tuple[str, ...], column: Any) -> Any:
            return case(
                *((column == value, literal(index)) for index, value in enumerate(values)),
                else_=literal(len(values)),
            )

        def way(column: Any) -> Any:
            return column.desc() if descending else column.asc()

        if sort == "flagged":
            return (way(flagged_at), way(Candidate.id))
        keys: list[Any]
        if sort == "patient":
            # Patients without a known name last, whichever way; then by name, then by id.
            unnamed = func.coalesce(PatientRecord.name_key, "") == ""
            keys = [case((unnamed, 1), else_=0).asc(), way(PatientRecord.name_key)]
            keys.append(way(Candidate.patient_id))
        elif sort == "trial":
            keys = [way(Candidate.trial)]
        elif sort == "verdict":
            keys = [way(ranked(VERDICT_ORDER, Candidate.verdict)), way(Candidate.verdict)]
        elif sort == "status":
            keys = [way(ranked(STATUS_ORDER, Candidate.status)), way(Candidate.status)]
        elif sort == "to_check":
            keys = [way(Candidate.unknown_count)]
        elif sort == "change":
            keys = [way(case((is_new, 0), (is_changed, 1), else_=2))]
        elif sort == "assignee":
            keys = [follow.assignee.is_(None).asc(), way(follow.assignee)]
        else:  # follow_up
            keys = [follow.follow_up_on.is_(None).asc(), way(follow.follow_up_on)]
        return (*keys, flagged_at.desc(), Candidate.id.desc())

    def worklist(
        self,
        user_name: str,
        *,
        trials: list[str],
        statuses: list[str],
        since: datetime | None,
        changed_only: bool,
        newest_first: bool,
        offset: int,
        limit: int,
        patient_ids: list[str] | None = None,
    ) -> WorklistPage:
        filters = WorklistFilters(trials, statuses, since, changed_only, newest_first, patient_ids)
        return self.page(user_name, filters, offset, limit)

    def page(
        self, user_name: str, filters: WorklistFilters, offset: int, limit: int
    ) -> WorklistPage:
        """A page of the worklist, and the counts of the whole selection."""
        joined, flagged_at, is_new, is_changed, mark, follow, order = self._selection(
            user_name, filters
        )
        page_query = (
            joined(
                select(
                    Candidate,
                    flagged_at.label("flagged_at"),
                    case(
                        (is_new, literal("new")), (is_changed, literal("changed")), else_=""
                    ).label("change"),
                    mark,
                    PatientRecord,
                    follow,
                )
            )
            .outerjoin(PatientRecord, PatientRecord.patient_id == Candidate.patient_id)
            .order_by(*order)
        )
        # The page's rows are found by id first: the rows an offset skips are sorted, not read
        # whole (their verdict lines and marks are large).
        page_ids = (
            joined(select(Candidate.id))
            .outerjoin(PatientRecord, PatientRecord.patient_id == Candidate.patient_id)
            .order_by(*order)
            .offset(offset)
            .limit(limit)
        )
        count_query = joined(
            select(
                func.count(),
                func.coalesce(func.sum(case((is_new, 1), else_=0)), 0),
                func.coalesce(func.sum(case((is_changed, 1), else_=0)), 0),
            )
        )
        with self.session() as session:
            total, new, changed = session.execute(count_query).one()
            ids = list(session.scalars(page_ids))
            rows = (
                [
                    WorklistRow(candidate, when, change, seen, patient, follow_up)
                    for candidate, when, change, seen, patient, follow_up in session.execute(
                        page_query.where(Candidate.id.in_(ids))
                    )
                ]
                if ids
                else []
            )
        return WorklistPage(rows, int(total), int(new), int(changed))

    def screening_log(self, user_name: str, filters: WorklistFilters) -> list[LogRow]:
        """Every row the filters keep, in the worklist's order, with who the patient is and the
        decision that set its status (the last one recorded here, when its status is the
        candidate's)."""
        joined, flagged_at, _new, _changed, _mark, follow, order = self._selection(
            user_name, filters
        )
        last = (
            select(func.max(DecisionRecord.id).label("id"))
            .group_by(DecisionRecord.candidate_id)
            .subquery()
        )
        decision = aliased(DecisionRecord)
        query = (
            joined(
                select(
                    Candidate.trial,
                    Candidate.patient_id,
                    PatientRecord.name,
                    PatientRecord.mrn,
                    PatientRecord.birth_date,
                    PatientRecord.sex,
                    Candidate.verdict,
                    Candidate.status,
                    Candidate.as_of,
                    flagged_at,
                    decision.decided_at,
                    decision.decided_by,
                    decision.reason,
                    follow.assignee,
                    follow.follow_up_on,
                    follow.review_reason,
                    follow.review_by,
                    follow.review_at,
                )
            )
            .outerjoin(PatientRecord, PatientRecord.patient_id == Candidate.patient_id)
            .outerjoin(
                decision,
                and_(
                    decision.candidate_id == Candidate.id,
                    decision.id.in_(select(last.c.id)),
                    decision.status == Candidate.status,
                ),
            )
            .order_by(*order)
        )
        with self.session() as session:
            return [
                LogRow(
                    trial,
                    patient_id,
                    name or "",
                    mrn or "",
                    birth or "",
                    sex or "",
                    verdict,
                    status,
                    as_of,
                    flagged,
                    decided_at,
                    decided_by or "",
                    reason or "",
                    assignee or "",
                    follow_up_on,
                    review_reason or "",
                    review_by or "",
                    review_at,
                )
                for (
                    trial,
                    patient_id,
                    name,
                    mrn,
                    birth,
                    sex,
                    verdict,
                    status,
                    as_of,
                    flagged,
                    decided_at,
                    decided_by,
                    reason,
                    assignee,
                    follow_up_on,
                    review_reason,
                    review_by,
                    review_at,
                ) in session.execute(query)
            ]

    def find_patients(self, query: str, limit: int) -> list[str]:
        """Patients whose name holds every word of ``query``, or whose MRN or FHIR id is
        ``query``: at most ``limit`` ids, in id order."""
        text = query.strip()
        words = query_words(text)
        if not text:
            return []
        matches: list[Any] = [
            PatientRecord.mrn_key == fold_identifier(text),
            PatientRecord.patient_id == text,
        ]
        if words:
            matches.append(
                and_(*(PatientRecord.name_key.like(like_pattern(w), escape="\\") for w in words))
            )
        with self.session() as session:
            found = set(
                session.scalars(select(PatientRecord.patient_id).where(or_(*matches)).limit(limit))
            )
            # A patient screened before their details were kept is still found by id.
            found |= set(
                session.scalars(
                    select(Candidate.patient_id).where(Candidate.patient_id == text).limit(1)
                )
            )
        return sorted(found)[:limit]

    def patient(self, patient_id: str) -> PatientRecord | None:
        with self.session() as session:
            return session.get(PatientRecord, patient_id)

    # --- decisions kept while their author signs in again ----------------------------------------

    def save_draft(
        self, key: str, author: str, patient_id: str, trial: str, values: dict[str, str]
    ) -> None:
        stamp = now()
        with self.session() as session:
            session.execute(
                delete(DecisionDraft).where(
                    DecisionDraft.created_at < stamp - timedelta(hours=DRAFT_HOURS)
                )
            )
            session.execute(delete(DecisionDraft).where(DecisionDraft.key_hash == key))
            session.add(
                DecisionDraft(
                    key_hash=key,
                    author=author,
                    patient_id=patient_id,
                    trial=trial,
                    status=values.get("status", ""),
                    reason=values.get("reason", ""),
                    note=values.get("note", ""),
                    expected_version=values.get("expected_version") or None,
                    created_at=stamp,
                )
            )

    def draft(self, key: str) -> DecisionDraft | None:
        with self.session() as session:
            found = session.get(DecisionDraft, key)
            if found is None or found.created_at < now() - timedelta(hours=DRAFT_HOURS):
                return None
            return found

    def drop_draft(self, key: str) -> None:
        with self.session() as session:
            session.execute(delete(DecisionDraft).where(DecisionDraft.key_hash == key))

    # --- exports --------------------------------------------------------------------------------

    def record_export(self, who: str, via: str, filters: dict[str, Any], rows: int) -> None:
        with self.session() as session:
            session.add(
                ExportRecord(
                    exported_by=who, via=via, filters=filters, rows=rows, exported_at=now()
                )
            )

    def exports(self) -> list[ExportRecord]:
        with self.session() as session:
            return list(session.scalars(select(ExportRecord).order_by(ExportRecord.id)))

    def ineligible_reasons(self) -> dict[str, dict[str, int]]:
        """{trial: {reason: patients}} of the candidates whose status is a decision of
        "ineligible" recorded here, by its reason."""
        last = (
            select(func.max(DecisionRecord.id).label("id"))
            .group_by(DecisionRecord.candidate_id)
            .subquery()
        )
        counts: dict[str, dict[str, int]] = {}
        with self.session() as session:
            for trial, reason, count in session.execute(
                select(Candidate.trial, DecisionRecord.reason, func.count())
                .join(DecisionRecord, DecisionRecord.candidate_id == Candidate.id)
                .where(
                    DecisionRecord.id.in_(select(last.c.id)),
                    Candidate.status == "ineligible",
                    DecisionRecord.status == "ineligible",
                )
                .group_by(Candidate.trial, DecisionRecord.reason)
            ):
                counts.setdefault(trial, {})[reason] = int(count)
        return counts

    def status_counts(self) -> dict[str, dict[str, int]]:
        """{trial: {status: patients}} over the whole worklist."""
        counts: dict[str, dict[str, int]] = {}
        with self.session() as session:
            for trial, status, count in session.execute(
                select(Candidate.trial, Candidate.status, func.count()).group_by(
                    Candidate.trial, Candidate.status
                )
            ):
                counts.setdefault(trial, {})[status] = int(count)
        return counts

    def trial_fingerprint(self, trial: str) -> tuple[int, datetime | None]:
        """Rows and latest update of a trial: the funnel is recomputed only when these move."""
        with self.session() as session:
            count, latest = session.execute(
                select(func.count(), func.max(Candidate.updated_at)).where(Candidate.trial == trial)
            ).one()
        return int(count), latest

    def results_of(self, trial: str) -> Iterator[dict[str, Any]]:
        """Every screened patient's verdict line for a trial, a thousand rows at a time."""
        with self.session() as session:
            yield from session.scalars(
                select(Candidate.result)
                .where(Candidate.trial == trial)
                .execution_options(yield_per=1000)
            )

    def candidates_by_id(self, ids: list[int]) -> list[Candidate]:
        """The rows of these ids that exist, in the order asked."""
        with self.session() as session:
            found = {
                c.id: c for c in session.scalars(select(Candidate).where(Candidate.id.in_(ids)))
            }
        return [found[i] for i in ids if i in found]

    def patients_of(self, patient_ids: list[str]) -> dict[str, PatientRecord]:
        with self.session() as session:
            return {
                p.patient_id: p
                for p in session.scalars(
                    select(PatientRecord).where(PatientRecord.patient_id.in_(patient_ids))
                )
            }

    def candidates_of_patient(self, patient_id: str) -> list[Candidate]:
        with self.session() as session:
            return list(
                session.scalars(
                    select(Candidate)
                    .where(Candidate.patient_id == patient_id)
                    .order_by(Candidate.trial)
                )
            )
