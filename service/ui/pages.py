"""The pages: portfolio overview, worklist, search, screening log, patient page, decisions,
signing in and out."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import RedirectResponse

from service.api.audit import record_access
from service.api.decisions import (
    DecisionConflictError,
    DecisionError,
    find_subject,
    record_decision,
)
from service.api.engine import ScreeningService
from service.api.screening_log import file_name, write_log
from service.errors import FhirServerError, error_kind
from service.fhir.ids import is_fhir_id
from service.roles import Access, RoleError
from service.ruleset.loader import RuleSet
from service.screening.funnel import rules_out
from service.settings import Settings
from service.state.audit import DECISION, EXPORT, VIEW, AuditLog
from service.state.models import Candidate, FollowUp, WebUser
from service.state.signin import SignInLimits, address_key, name_key
from service.state.store import now
from service.state.worklist import (
    FLAGGED,
    Change,
    HistoryEntry,
    WorklistPage,
    WorklistRow,
    WorklistStore,
    criterion_results,
)
from service.ui import auth, drafts
from service.ui.evidence import Displays, Evidence, read_evidence, unavailable
from service.ui.passwords import PasswordChecker
from service.ui.people import Who, who
from service.ui.query import PAGE_SIZES, WorklistQuery, read_worklist_query
from service.ui.times import formatter, shown_time
from service.ui.vocabulary import (
    DECISION_CHOICES,
    ENROLLED,
    STATUS_LABELS,
    DecisionReasons,
    status_label,
)

log = logging.getLogger(__name__)
router = APIRouter()

SEARCH_LIMIT = 50  # patients a search lists at most (refine it to find one of more)
API_CLIENT = "An API client"  # decisions recorded through the API without a person's name
NOTE_MAX = 1000
CHANGES_SHOWN = 4  # who-changed-what lines a worklist row shows at most
FHIR_WAIT_SECONDS = 15.0  # a patient page shows what it has rather than hang on the server
# A sign-in that must wait is refused after this pause: a flood of tries slows down by itself.
REFUSAL_PAUSE_SECONDS = 1.0


# --- what every page needs ----------------------------------------------------------------------


def _service(request: Request) -> ScreeningService:
    service: ScreeningService = request.app.state.parent.state.service
    return service


def _store(request: Request) -> WorklistStore:
    return WorklistStore(_service(request).store.engine)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _person(request: Request) -> auth.Person:
    person = await auth.current_person(request, _store(request))
    if person is None:
        raise auth.NotSignedInError()
    return person


async def _reader_of_patients(request: Request) -> auth.Person:
    """The person signed in, if their roles show patients (viewer, coordinator)."""
    person = await _person(request)
    if not person.access.may_see_patients():
        raise HTTPException(403, "Your role shows counts only, not patients.")
    return person


async def audit(
    request: Request,
    person: auth.Person,
    action: str,
    *,
    patient_id: str = "",
    trial: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    """Into the access audit: this person viewed, decided or exported (service.state.audit)."""
    await record_access(
        request,
        AuditLog(_service(request).store.engine),
        _settings(request),
        person.name,
        action,
        "ui",
        patient_id=patient_id,
        trial=trial,
        detail=detail,
    )


def render(
    request: Request,
    template: str,
    person: auth.Person | None,
    status_code: int = 200,
    **context: Any,
) -> Response:
    response: Response = request.app.state.templates.TemplateResponse(
        request,
        template,
        {
            "person": person,
            "csrf_token": auth.csrf_token(request),
            "mode": _settings(request).ui_mode,
            "status_label": status_label,
            "result_class": result_class,
            **context,
            # Times in the configured zone, whatever a handler passed.
            "when": formatter(_settings(request).zone),
            "zone_name": _settings(request).time_zone,
        },
        status_code=status_code,
    )
    return response


def _text(value: Any) -> str:
    """A form field as text: an uploaded file where text was expected counts as empty, and a
    NUL character (which no name or note holds, and PostgreSQL refuses) is dropped."""
    return value.replace("\x00", "") if isinstance(value, str) else ""


def when(value: datetime | None) -> str:
    """UTC, for what has no request at hand; pages show times with ``render``'s ``when``."""
    return shown_time(value, ZoneInfo("UTC"))


def result_class(kind: str, result: str) -> str:
    """A criterion's result coloured by what it means for eligibility: an inclusion met or an
    exclusion not met is favourable, the opposite rules the patient out, unknown is open."""
    if result == "unknown" or kind not in ("inclusion", "exclusion"):
        return "result-open"
    return "result-rules-out" if rules_out(kind, result) else "result-favourable"


def _today() -> Any:
    return datetime.now(UTC).date()


def _patient_path(request: Request, patient_id: str, trial: str) -> str:
    return (
        request.url_for("patient", patient_id=patient_id).path + "?" + urlencode({"trial": trial})
    )


# --- worklist -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorklistLine:
    row: WorklistRow
    acronym: str
    to_check: int  # criteria still unknown, clinician review included
    clinician: int  # of which for clinician review (the rules leave them to a person)
    what_changed: list[str]
    link: str
    who: Who
    may_decide: bool = False
    due: bool = False  # its follow-up date is today or past


def _changed_words(row: WorklistRow, changes: list[Change]) -> list[str]:
    """Since this person last opened the patient (or, never opened by them, ever): who did what
    (the verdict moves by prescreen, decisions, notes, assignments by people)."""
    seen, candidate = row.seen, row.candidate
    if row.change != "changed":
        return []
    words = []
    if seen is not None:
        moved = []
        if seen.verdict != candidate.verdict:
            moved.append(
                f"verdict {status_label(seen.verdict)} → {status_label(candidate.verdict)}"
            )
        now_results = criterion_results(candidate.result)
        for cid, result in now_results.items():
            before = seen.results.get(cid)
            if before is not None and before != result:
                moved.append(f"{cid} {before.replace('_', ' ')} → {result.replace('_', ' ')}")
        if moved:
            words.append("prescreen (re-screened): " + ", ".join(moved))
    for change in changes:
        author = change.who or API_CLIENT
        if change.kind == "decision":
            what = f"status {status_label(change.before)} → {status_label(change.what)}"
        elif change.kind == "note":
            what = "added a note"
        else:
            what = change.what
        words.append(f"{author}: {what}")
    if len(words) > CHANGES_SHOWN:  # the latest ones; the patient page's history has them all
        earlier = len(words) - CHANGES_SHOWN
        words = [f"{earlier} earlier change{'s' if earlier > 1 else ''}", *words[-CHANGES_SHOWN:]]
    return words or ["re-screened by prescreen (no result moved)"]


def _unknowns(ruleset: RuleSet | None, result: dict[str, Any] | None) -> tuple[int, int]:
    """(criteria still unknown, of which for clinician review): the worklist and the patient
    page count the same."""
    manual = {c.id for c in ruleset.criteria if c.manual} if ruleset else set()
    unknown = [cid for cid, r in criterion_results(result).items() if r == "unknown"]
    return len(unknown), sum(1 for cid in unknown if cid in manual)


def _lines(
    request: Request,
    rows: list[WorklistRow],
    changes: dict[int, list[Change]] | None = None,
    person: auth.Person | None = None,
) -> list[WorklistLine]:
    service = _service(request)
    today = _today()
    lines = []
    for row in rows:
        ruleset = service.rulesets.get(row.candidate.trial)
        unknown, clinician = _unknowns(ruleset, row.candidate.result)
        follow_up_on = row.follow.follow_up_on if row.follow else None
        lines.append(
            WorklistLine(
                row,
                ruleset.trial.acronym if ruleset else row.candidate.trial,
                unknown,
                clinician,
                _changed_words(row, (changes or {}).get(row.candidate.id, [])),
                _patient_path(request, row.candidate.patient_id, row.candidate.trial),
                who(row.candidate.patient_id, row.patient, today),
                person is not None and person.may_decide(row.candidate.trial),
                follow_up_on is not None and follow_up_on <= today,
            )
        )
    return lines


def _read_query(request: Request) -> WorklistQuery:
    return read_worklist_query(
        request.query_params, _service(request).rulesets, list(STATUS_LABELS)
    )


async def _worklist_page(request: Request, person: auth.Person, query: WorklistQuery) -> Any:
    return await asyncio.to_thread(
        _store(request).page,
        person.name,
        query.filters(person.name, _today()),
        (query.page - 1) * query.size,
        query.size,
    )


def _trial_choices(request: Request) -> list[tuple[str, str]]:
    return [(t, r.trial.acronym) for t, r in _service(request).rulesets.items()]


def _reasons(request: Request) -> DecisionReasons:
    reasons: DecisionReasons = request.app.state.reasons
    return reasons


# The worklist's columns: (sort key, heading).
COLUMNS = (
    ("patient", "Patient"),
    ("trial", "Trial"),
    ("verdict", "Verdict"),
    ("status", "Status"),
    ("flagged", "Flagged"),
    ("to_check", "Left to check"),
    ("change", "Since you looked"),
    ("assignee", "Assigned to"),
    ("follow_up", "Follow-up"),
)


@dataclass
class BulkOutcome:
    """What a bulk change did, row by row, shown next to its form."""

    status: str
    recorded: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # "who: why", nothing written for them
    problem: str = ""  # the whole form was refused (nothing written)
    values: dict[str, str] = field(default_factory=dict)


async def _worklist_response(
    request: Request,
    person: auth.Person,
    query: WorklistQuery,
    bulk: BulkOutcome | None = None,
    status_code: int = 200,
) -> Response:
    result = await _worklist_page(request, person, query)
    pages = max(1, -(-result.total // query.size))
    if query.page > pages:
        query.problems.append(
            f"Page {query.page} is past the end ({pages} page{'' if pages == 1 else 's'}): "
            "showing the last page."
        )
        query.page = pages
        result = await _worklist_page(request, person, query)
    store = _store(request)
    changes = await asyncio.to_thread(store.changes_since_seen, person.name, result.rows)
    filters = query.params()
    base = request.url_for("worklist").path

    def link(params: dict[str, str]) -> str:
        return base + "?" + urlencode(params)

    def page_link(number: int) -> str:
        return link(filters | {"page": str(number)})

    reasons = _reasons(request)
    return render(
        request,
        "worklist.html",
        person,
        status_code=status_code,
        page="worklist",
        lines=_lines(request, result.rows, changes, person),
        result=result,
        filters=query,
        problems=query.problems,
        trials=_trial_choices(request),
        statuses=list(STATUS_LABELS.items()),
        columns=[(key, label, link(query.sorted_by(key))) for key, label in COLUMNS],
        sort_labels=dict(COLUMNS),
        sizes=PAGE_SIZES,
        page_number=query.page,
        pages=pages,
        previous_link=page_link(query.page - 1) if query.page > 1 else "",
        next_link=page_link(query.page + 1) if query.page < pages else "",
        csv_link=request.url_for("worklist_csv").path + "?" + urlencode(filters),
        query_string=urlencode(filters | {"page": str(query.page)}),
        bulk=bulk,
        bulk_choices=[(c, status_label(c)) for c in DECISION_CHOICES if c != ENROLLED],
        bulk_reasons=[(s, reasons.general(s)) for s in DECISION_CHOICES if reasons.closes(s)],
        shown_at=now().isoformat(),
        may_decide_any=any(person.may_decide(t) for t in _service(request).rulesets),
        when=when,
    )


@router.get("/worklist", name="worklist")
async def worklist(request: Request) -> Response:
    person = await _reader_of_patients(request)
    return await _worklist_response(request, person, _read_query(request))


def _bulk_refusal(line: str, conflict: DecisionConflictError) -> str:
    theirs = status_label(conflict.current_status)
    last = conflict.last_decision
    if last is not None and last.status == conflict.current_status:
        by = f"{last.decided_by or API_CLIENT} recorded “{theirs}” at {when(last.decided_at)}"
    else:
        by = f"its status is now “{theirs}” on the FHIR server"
    return f"{line}: not changed, {by} after this list was shown (theirs stands)"


@router.post("/worklist/bulk", name="worklist_bulk")
async def worklist_bulk(request: Request) -> Response:
    """One status for the rows ticked, each through the one decision path: a row whose status
    changed since the list was shown is reported and left as it is."""
    person = await _reader_of_patients(request)
    form = await auth.checked_form(request)
    service = _service(request)
    store = _store(request)
    query = read_worklist_query(
        _QueryParams(_text(form.get("query"))), service.rulesets, list(STATUS_LABELS)
    )
    status = _text(form.get("status"))
    reason = _text(form.get(f"reason-{status}")).strip() if status else ""
    note = _text(form.get("note")).strip()[: NOTE_MAX * 2]
    outcome = BulkOutcome(status, values={"status": status, "reason": reason, "note": note})
    try:
        shown_at: datetime | None = datetime.fromisoformat(_text(form.get("shown_at"))[:40])
    except ValueError:
        shown_at = None
    if shown_at is not None and shown_at.tzinfo is not None:  # times are kept in naive UTC
        shown_at = shown_at.astimezone(UTC).replace(tzinfo=None)
    picked: dict[int, str] = {}
    for value in form.getlist("row"):
        cid, _, shown = _text(value).partition(":")
        if cid.isascii() and cid.isdigit() and len(cid) <= 12 and shown:
            picked.setdefault(int(cid), shown[:32])
    reasons = _reasons(request)
    if not picked:
        outcome.problem = "Nothing changed: tick the rows to change first."
    elif status not in DECISION_CHOICES or status == ENROLLED:
        outcome.problem = "Nothing changed: choose the new status."
    elif reasons.closes(status) and reason not in reasons.general(status):
        outcome.problem = f"Nothing changed: choose why ({status_label(status)})."
    elif len(note) > NOTE_MAX:
        outcome.problem = f"Nothing changed: the note is longer than {NOTE_MAX} characters."
    if outcome.problem:
        return await _worklist_response(request, person, query, outcome, 422)
    candidates = await asyncio.to_thread(store.candidates_by_id, list(picked))
    details = await asyncio.to_thread(store.patients_of, [c.patient_id for c in candidates])
    today = _today()
    for candidate in candidates:
        ruleset = service.rulesets.get(candidate.trial)
        acronym = ruleset.trial.acronym if ruleset else candidate.trial
        person_is = who(candidate.patient_id, details.get(candidate.patient_id), today)
        line = f"{person_is.label} ({acronym})"
        shown = picked[candidate.id]
        if ruleset is None or not person.may_decide(candidate.trial):
            outcome.refused.append(f"{line}: your role does not record decisions for {acronym}")
            continue
        if shown == ENROLLED:
            outcome.refused.append(
                f"{line}: is Enrolled; change it on the patient's page, which asks to confirm"
            )
            continue
        try:
            await record_decision(
                service,
                candidate.id,
                status,
                decided_by=person.name,
                reason=reason if reasons.closes(status) else "",
                note=note,
                expected_status=shown,
                unchanged_since=shown_at,
            )
        except DecisionConflictError as conflict:
            outcome.refused.append(_bulk_refusal(line, conflict))
        except DecisionError as error:
            outcome.refused.append(f"{line}: not changed, {error.message}")
        except FhirServerError as error:
            log.warning("a bulk decision failed: %s", error_kind(error))
            outcome.refused.append(f"{line}: not changed, the FHIR server could not be reached")
        else:
            outcome.recorded.append(line)
    missing = len(picked) - len(candidates)
    if missing:
        outcome.refused.append(f"{missing} row{'s' if missing > 1 else ''} no longer exist")
    code = 409 if outcome.refused else 200
    return await _worklist_response(request, person, query, outcome, code)


class _QueryParams(dict[str, str]):
    """The worklist's query string as the bulk form carried it (the list it was sent from)."""

    def __init__(self, text: str) -> None:
        super().__init__(parse_qsl(text[:2000]))


@router.get("/worklist.csv", name="worklist_csv")
async def worklist_csv(request: Request) -> Response:
    """The worklist's rows with its filters, every page, as the screening log (CSV)."""
    person = await _reader_of_patients(request)
    query = _read_query(request)
    store = _store(request)
    filters = query.filters(person.name, _today())
    rows = await asyncio.to_thread(store.screening_log, person.name, filters)
    studies = {t: r.trial.nct_id for t, r in _service(request).rulesets.items()}
    body = await asyncio.to_thread(write_log, rows, studies)
    await asyncio.to_thread(store.record_export, person.name, "ui", query.params(), len(rows))
    await audit(request, person, EXPORT, detail={"filters": query.params(), "rows": len(rows)})
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{file_name(str(_today()))}"'},
    )


@router.post("/search", name="search")
async def search(request: Request) -> Response:
    """Patients by name, MRN or FHIR id. Sent with POST, so that what was searched for stays out
    of addresses, logs and the browser's history."""
    person = await _reader_of_patients(request)
    form = await auth.checked_form(request)
    raw = form.get("q")
    text = raw.strip()[:200] if isinstance(raw, str) else ""
    problems: list[str] = []
    ids: list[str] = []
    if not text:
        problems.append("Type a name, a medical record number (MRN) or a patient id.")
    elif "\x00" in text:
        problems.append("The search cannot contain that character.")
    else:
        ids = await asyncio.to_thread(_store(request).find_patients, text, SEARCH_LIMIT + 1)
    more = len(ids) > SEARCH_LIMIT
    result = WorklistPage([], 0, 0, 0)
    if ids:
        result = await asyncio.to_thread(
            _store(request).worklist,
            person.name,
            trials=[],
            statuses=[],
            since=None,
            changed_only=False,
            newest_first=True,
            offset=0,
            limit=SEARCH_LIMIT * max(1, len(_service(request).rulesets)),
            patient_ids=ids[:SEARCH_LIMIT],
        )
    # A patient's rows together, patients by name (then id), trials in the order served.
    order = {trial: index for index, trial in enumerate(_service(request).rulesets)}
    found = sorted(
        result.rows,
        key=lambda r: (
            (r.patient.name_key if r.patient else "") or "~",
            r.candidate.patient_id,
            order.get(r.candidate.trial, len(order)),
        ),
    )
    return render(
        request,
        "search.html",
        person,
        page="search",
        q=text,
        problems=problems,
        lines=_lines(request, found),
        patients=min(len(ids), SEARCH_LIMIT),
        more=more,
        when=when,
    )


# --- patient page -------------------------------------------------------------------------------


@dataclass
class CriterionView:
    id: str
    kind: str
    text: str
    result: str
    reason: str
    manual: bool
    evidence: list[Evidence]


@dataclass
class DecisionView:
    """The decision form of one trial and the feedback beside it."""

    trial: str
    acronym: str
    reasons: dict[str, list[str]]  # {closing status: the reasons offered for it}
    may_decide: bool
    problem: str = ""  # why decisions cannot be recorded now ("": they can)
    expected_version: str = ""
    values: dict[str, str] = field(default_factory=dict)  # status, reason, note shown
    notice: str = ""
    notice_kind: str = "status"  # status | error | warning
    focus: bool = False  # the feedback takes the keyboard focus (it answers a submission)
    sign_in: str = ""  # the sign-in link, when the session had ended
    confirm: str = ""  # leaving Enrolled for this status waits for the person to confirm it
    shown_status: str = ""  # the worklist status the form was shown with


@dataclass
class TrialPanel:
    trial: str
    acronym: str
    title: str
    candidate: Candidate
    criteria: list[CriterionView]
    to_check: list[CriterionView]
    history: list[HistoryEntry]
    decision: DecisionView
    subject_status: str | None = None
    clinician: int = 0  # of the criteria left to check, those for clinician review
    follow: FollowUp | None = None
    colleagues: list[str] = field(default_factory=list)  # people who may be assigned
    excluded: bool = False  # the rules exclude the patient: a person may flag it for review
    review_reasons: list[str] = field(default_factory=list)
    notice: str = ""  # feedback of the follow-up forms
    notice_kind: str = "status"
    values: dict[str, str] = field(default_factory=dict)  # what the follow-up forms sent


@dataclass(frozen=True)
class Feedback:
    """What the page says after a decision was sent: the words, their kind, and what the person
    had chosen and typed (kept in the form after an error or a conflict)."""

    text: str
    kind: str = "status"
    values: dict[str, str] = field(default_factory=dict)
    expected_version: str | None = None  # None: the version the FHIR server has now
    confirm: str = ""  # the status that waits for a confirmation to leave Enrolled


def _closing_reasons(request: Request, ruleset: RuleSet) -> dict[str, list[str]]:
    reasons = _reasons(request)
    return {s: reasons.for_status(s, ruleset) for s in DECISION_CHOICES if reasons.closes(s)}


async def _subject(service: ScreeningService, trial: str, patient_id: str) -> tuple[Any, str]:
    """(ResearchSubject or None, why not)."""
    try:
        return await asyncio.wait_for(
            find_subject(service, trial, patient_id), FHIR_WAIT_SECONDS
        ), ""
    except DecisionError as error:
        return None, error.message
    except Exception as error:  # the server is down or slow: the page still shows the results
        log.warning("reading a ResearchSubject failed: %s", type(error).__name__)
        return None, "the FHIR server could not be reached"


async def _evidence(
    service: ScreeningService, references: list[str], displays: Displays
) -> dict[str, Evidence]:
    try:
        client = await service.client()
        return await asyncio.wait_for(
            read_evidence(client, references, displays), FHIR_WAIT_SECONDS
        )
    except Exception as error:
        log.warning("reading evidence failed: %s", type(error).__name__)
        return {r: unavailable(r, "the FHIR server could not be reached") for r in references}


def _decision_view(
    request: Request,
    person: auth.Person,
    ruleset: RuleSet,
    trial: str,
    subject: Any,
    problem: str,
    feedback: Feedback | None,
    draft: Any,
) -> DecisionView:
    version = str((subject or {}).get("meta", {}).get("versionId") or "")
    view = DecisionView(
        trial,
        ruleset.trial.acronym,
        _closing_reasons(request, ruleset),
        person.may_decide(trial),
        problem if subject is None else "",
        version,
    )
    flash = request.session.get(auth.FLASH)
    if feedback is not None:
        view.notice, view.notice_kind, view.focus = feedback.text, feedback.kind, True
        view.values = feedback.values
        view.confirm = feedback.confirm
        if feedback.expected_version is not None:
            view.expected_version = feedback.expected_version
    elif (
        isinstance(flash, dict)
        and flash.get("trial") == trial
        and flash.get("part", "decision") == "decision"
    ):
        view.notice, view.focus = str(flash.get("text", "")), True
        request.session.pop(auth.FLASH, None)
    elif draft is not None and draft.trial == trial:
        view.values = {"status": draft.status, "reason": draft.reason, "note": draft.note}
        view.expected_version = draft.expected_version or ""
        view.notice_kind, view.focus = "warning", True
        view.notice = (
            "Not saved yet: your session had ended when you sent this decision. It is filled "
            "in below as you sent it: check it and press “Record decision”."
        )
    return view


async def _patient_page(
    request: Request,
    person: auth.Person,
    patient_id: str,
    focus: str,
    feedback: dict[str, Feedback] | None = None,
    status_code: int = 200,
    follow_feedback: dict[str, Feedback] | None = None,
) -> Response:
    service = _service(request)
    store = _store(request)
    rows = await asyncio.to_thread(store.candidates_of_patient, patient_id)
    rows = [r for r in rows if r.trial in service.rulesets]
    if not rows:
        raise HTTPException(404, "No screening result for this patient.")
    rows.sort(key=lambda r: (r.trial != focus, r.trial))
    references = [f"Patient/{patient_id}"]
    for row in rows:
        for outcome in (row.result.get("criteria") or {}).values():
            references += [str(e) for e in outcome.get("evidence", [])]
    evidence, subjects, record, draft = await asyncio.gather(
        _evidence(service, references, request.app.state.displays),
        asyncio.gather(*(_subject(service, r.trial, patient_id) for r in rows)),
        asyncio.to_thread(store.patient, patient_id),
        drafts.find(request, store, person.name, patient_id),
    )
    histories = await asyncio.to_thread(lambda: [store.history(row.id) for row in rows])
    follows = await asyncio.to_thread(lambda: [store.follow_up(row.id) for row in rows])
    people = await asyncio.to_thread(store.users)
    flash = request.session.get(auth.FLASH)
    panels = []
    for row, (subject, problem), history, follow in zip(
        rows, subjects, histories, follows, strict=True
    ):
        ruleset = service.rulesets[row.trial]
        found = row.result.get("criteria") or {}
        criteria = []
        for criterion in ruleset.criteria:
            outcome = found.get(criterion.id) or {}
            criteria.append(
                CriterionView(
                    criterion.id,
                    criterion.kind,
                    criterion.text,
                    str(outcome.get("result", "unknown")),
                    str(outcome.get("reason", "")),
                    criterion.manual,
                    [evidence[str(e)] for e in outcome.get("evidence", []) if str(e) in evidence],
                )
            )
        panels.append(
            TrialPanel(
                trial=row.trial,
                acronym=ruleset.trial.acronym,
                title=ruleset.trial.title,
                candidate=row,
                criteria=criteria,
                to_check=sorted(
                    (c for c in criteria if c.result == "unknown"), key=lambda c: c.manual
                ),
                history=history,
                decision=_decision_view(
                    request,
                    person,
                    ruleset,
                    row.trial,
                    subject,
                    problem,
                    (feedback or {}).get(row.trial),
                    draft,
                ),
                subject_status=str(subject.get("status", "")) if subject else None,
                clinician=sum(1 for c in criteria if c.result == "unknown" and c.manual),
                follow=follow,
                colleagues=_colleagues(people, row.trial),
                excluded=row.verdict not in FLAGGED,
                review_reasons=_reasons(request).review,
            )
        )
        panel = panels[-1]
        panel.decision.shown_status = row.status
        sent = (follow_feedback or {}).get(row.trial)
        if sent is not None:
            panel.notice, panel.notice_kind, panel.values = sent.text, sent.kind, sent.values
        elif (
            isinstance(flash, dict)
            and flash.get("trial") == row.trial
            and flash.get("part") == "follow"
        ):
            panel.notice = str(flash.get("text", ""))
            request.session.pop(auth.FLASH, None)
    await asyncio.to_thread(store.mark_seen, person.name, rows)
    return render(
        request,
        "patient.html",
        person,
        status_code=status_code,
        page="patient",
        patient_id=patient_id,
        who=who(patient_id, record, _today()),
        patient=evidence.get(f"Patient/{patient_id}"),
        panels=panels,
        choices=[(c, status_label(c)) for c in DECISION_CHOICES],
        api_client=API_CLIENT,
        when=when,
    )


@router.get("/patients/{patient_id}", name="patient")
async def patient(request: Request, patient_id: str, trial: str = "") -> Response:
    person = await _reader_of_patients(request)
    if not is_fhir_id(patient_id):
        raise HTTPException(404, "No screening result for this patient.")
    await audit(request, person, VIEW, patient_id=patient_id, trial=trial)
    return await _patient_page(request, person, patient_id, trial)


def sent_status(status: str) -> dict[str, str]:
    return {"status": status}


def _conflict_text(conflict: DecisionConflictError, zone: ZoneInfo) -> str:
    theirs = status_label(conflict.current_status)
    last = conflict.last_decision
    if last is not None and last.status == conflict.current_status:
        at = shown_time(last.decided_at, zone)
        who_did = f"{last.decided_by or API_CLIENT} recorded “{theirs}” at {at}"
    else:
        who_did = f"The status was changed to “{theirs}” on the FHIR server"
    return (
        f"Not saved: {who_did} while this page was open. Their decision stands (see the "
        "history); your choice and note are kept below: send them again if they still apply."
    )


def _sent(form: Any) -> dict[str, str]:
    """What the decision form sent, as text (see ``_text``)."""

    def text(name: str) -> str:
        return _text(form.get(name, ""))

    status = text("status")
    # Each closing status has its own list of reasons: the one of the status chosen counts.
    reason = text(f"reason-{status}").strip() if status else ""
    return {
        "trial": text("trial"),
        "status": status,
        "reason": reason or text("reason").strip(),
        "note": text("note").strip()[: NOTE_MAX * 2],
        "expected_version": text("expected_version")[:64],
        "confirm": text("confirm")[:32],
        "shown_status": text("shown_status")[:32],
    }


async def _session_ended(
    request: Request, patient_id: str, ruleset: RuleSet, sent: dict[str, str], form: Any
) -> Response:
    """A decision sent by a browser whose session has ended: nothing about the patient is
    shown (nobody is signed in), what was sent is kept and handed back."""
    trial = sent["trial"]
    author = drafts.author(request, form)
    kept = author is not None
    if author is not None:
        await drafts.keep(request, _store(request), author, patient_id, trial, sent)
    request.session[auth.NEXT] = _patient_path(request, patient_id, trial) + f"#decision-{trial}"
    if kept:
        text = (
            "Not saved: your session had ended (you signed out, perhaps in another tab, or it "
            "expired). What you chose and typed is kept: sign in again and it will be here, "
            "filled in, ready to send."
        )
    else:
        text = (
            "Not saved: your session had ended. Sign in again, then send your decision again: "
            "what you chose and typed is below (copy the note to keep it)."
        )
    view = DecisionView(
        trial,
        ruleset.trial.acronym,
        _closing_reasons(request, ruleset),
        may_decide=True,
        expected_version=sent["expected_version"],
        values=sent,
        notice=text,
        notice_kind="warning",
        focus=True,
        sign_in=request.url_for("login").path,
    )
    return render(
        request,
        "ended.html",
        None,
        status_code=401,
        page="ended",
        decision=view,
        patient_id=patient_id,
        choices=[(c, status_label(c)) for c in DECISION_CHOICES],
    )


@router.post("/patients/{patient_id}/decision", name="decide")
async def decide(request: Request, patient_id: str) -> Response:
    service = _service(request)
    store = _store(request)
    form = await request.form()
    sent = _sent(form)
    trial = sent["trial"]
    ruleset = service.rulesets.get(trial)
    if ruleset is None or not is_fhir_id(patient_id):
        raise HTTPException(404, "This trial is not served here.")
    person = await auth.current_person(request, store)
    if person is None:
        return await _session_ended(request, patient_id, ruleset, sent, form)
    if not person.access.may_see_patients():
        raise HTTPException(403, "Your role shows counts only, not patients.")
    if not person.may_decide(trial):
        raise HTTPException(403, "Your role does not allow recording decisions for this trial.")
    rows = await asyncio.to_thread(store.candidates_of_patient, patient_id)
    row = next((r for r in rows if r.trial == trial), None)
    if row is None:
        raise HTTPException(404, "No screening result for this patient.")
    if not drafts.token_matches(request, form):
        # A page opened before this browser last signed in: nothing is written, and what was
        # sent comes back in a form that carries the current token.
        stale = Feedback(
            "Not saved: this page's security token is out of date (it was opened before you "
            "last signed in). Your choice and note are below: check them and send them again.",
            "error",
            sent,
            sent["expected_version"],
        )
        return await _patient_page(request, person, patient_id, trial, {trial: stale}, 403)

    status, reason, note = sent["status"], sent["reason"], sent["note"]
    expected = sent["expected_version"] or None
    reasons = _reasons(request)
    problem = ""
    if status not in DECISION_CHOICES:
        problem = "Not saved: choose a decision."
    elif reasons.closes(status) and reason not in reasons.for_status(status, ruleset):
        problem = f"Not saved: choose why ({status_label(status)}) from its list of reasons."
    elif len(note) > NOTE_MAX:
        problem = f"Not saved: the note is longer than {NOTE_MAX} characters."
    if problem:
        feedback = Feedback(problem, "error", sent, expected or "")
        return await _patient_page(request, person, patient_id, trial, {trial: feedback}, 422)
    # Asked when the page showed Enrolled: if someone else enrolled the patient meanwhile, the
    # decision path reports that instead (nothing is written over it).
    shown = sent["shown_status"] or row.status
    if shown == ENROLLED and status != ENROLLED and sent["confirm"] != status:
        # Leaving Enrolled is rarely meant: the server asks first (no script needed).
        label = status_label(status)
        ask = Feedback(
            f"Not saved yet: this patient is Enrolled in {ruleset.trial.acronym}. Changing the "
            f"status to “{label}” takes them off the enrolled patients. Tick “Yes, change "
            f"Enrolled to {label}” below and record the decision again to confirm.",
            "warning",
            sent,
            expected or "",
            confirm=status,
        )
        return await _patient_page(request, person, patient_id, trial, {trial: ask}, 409)
    try:
        await record_decision(
            service,
            row.id,
            status,
            expected_version=expected,
            decided_by=person.name,
            reason=reason if reasons.closes(status) else "",
            note=note,
        )
    except DecisionConflictError as conflict:
        feedback = Feedback(_conflict_text(conflict, _settings(request).zone), "error", sent)
        return await _patient_page(request, person, patient_id, trial, {trial: feedback}, 409)
    except DecisionError as error:
        feedback = Feedback(f"Not saved: {error.message}.", "error", sent, expected or "")
        return await _patient_page(
            request, person, patient_id, trial, {trial: feedback}, error.status
        )
    except FhirServerError as error:  # the server is down or failing: nothing was written
        log.warning("recording a decision failed: %s", error_kind(error))
        feedback = Feedback(
            "Not saved: the FHIR server could not be reached. Try again in a moment.",
            "error",
            sent,
            expected or "",
        )
        return await _patient_page(request, person, patient_id, trial, {trial: feedback}, 502)
    await audit(
        request, person, DECISION, patient_id=patient_id, trial=trial, detail=sent_status(status)
    )
    await drafts.drop(request, store, person.name, patient_id, trial)
    request.session[auth.FLASH] = {
        "trial": trial,
        "text": f"Recorded for {ruleset.trial.acronym}: {status_label(status)}.",
    }
    target = _patient_path(request, patient_id, trial) + f"#decision-{trial}"
    return RedirectResponse(target, status_code=303)


def _colleagues(people: list[WebUser], trial: str) -> list[str]:
    """The people a row of this trial may be assigned to: those who may decide for it."""
    found = []
    for user in people:
        try:
            if Access.stored(user.role, user.trials).may_decide(trial):
                found.append(user.name)
        except RoleError:
            continue
    return found


async def _follow_up_target(
    request: Request, patient_id: str, form: Any
) -> tuple[auth.Person, Candidate, RuleSet]:
    """The signed-in person who may act on this patient's row of the trial the form names."""
    person = await _reader_of_patients(request)
    trial = _text(form.get("trial"))
    ruleset = _service(request).rulesets.get(trial)
    if ruleset is None or not is_fhir_id(patient_id):
        raise HTTPException(404, "This trial is not served here.")
    if not person.may_decide(trial):
        raise HTTPException(403, "Your role does not allow following up patients of this trial.")
    rows = await asyncio.to_thread(_store(request).candidates_of_patient, patient_id)
    row = next((r for r in rows if r.trial == trial), None)
    if row is None:
        raise HTTPException(404, "No screening result for this patient.")
    return person, row, ruleset


def _done(request: Request, patient_id: str, trial: str, text: str) -> Response:
    request.session[auth.FLASH] = {"trial": trial, "part": "follow", "text": text}
    # No fragment: a page opened at a fragment gives no element the focus, and the notice
    # (autofocus) takes it, which brings it into view.
    return RedirectResponse(_patient_path(request, patient_id, trial), status_code=303)


async def _follow_refused(
    request: Request, person: auth.Person, patient_id: str, trial: str, text: str, form: Any
) -> Response:
    values = {k: _text(form.get(k)) for k in ("note", "assignee", "follow_up_on", "reason")}
    feedback = Feedback(text, "error", values)
    return await _patient_page(
        request, person, patient_id, trial, status_code=422, follow_feedback={trial: feedback}
    )


@router.post("/patients/{patient_id}/note", name="add_note")
async def add_note(request: Request, patient_id: str) -> Response:
    """A note on a patient's row for a trial, the status left as it is."""
    form = await auth.checked_form(request)
    person, row, ruleset = await _follow_up_target(request, patient_id, form)
    note = _text(form.get("note")).strip()
    if not note or len(note) > NOTE_MAX:
        problem = (
            "Not saved: write the note first."
            if not note
            else f"Not saved: the note is longer than {NOTE_MAX} characters."
        )
        return await _follow_refused(request, person, patient_id, row.trial, problem, form)
    await asyncio.to_thread(_store(request).add_note, row.id, person.name, note)
    return _done(request, patient_id, row.trial, f"Note added for {ruleset.trial.acronym}.")


@router.post("/patients/{patient_id}/follow-up", name="follow_up")
async def follow_up(request: Request, patient_id: str) -> Response:
    """Who follows the row up, and when."""
    form = await auth.checked_form(request)
    person, row, ruleset = await _follow_up_target(request, patient_id, form)
    assignee = _text(form.get("assignee")).strip()
    people = await asyncio.to_thread(_store(request).users)
    if assignee and assignee not in _colleagues(people, row.trial):
        problem = "Not saved: choose someone who follows up patients of this trial."
        return await _follow_refused(request, person, patient_id, row.trial, problem, form)
    day_text = _text(form.get("follow_up_on")).strip()
    try:
        day = date.fromisoformat(day_text) if day_text else None
    except ValueError:
        problem = "Not saved: the follow-up date must be a date (YYYY-MM-DD)."
        return await _follow_refused(request, person, patient_id, row.trial, problem, form)
    changed = await asyncio.to_thread(
        _store(request).set_follow_up, row.id, person.name, assignee or None, day
    )
    text = (
        f"Saved for {ruleset.trial.acronym}: {'; '.join(changed)}."
        if changed
        else "Nothing to save: the assignment and the date are as they were."
    )
    return _done(request, patient_id, row.trial, text)


@router.post("/patients/{patient_id}/review", name="flag_review")
async def flag_review(request: Request, patient_id: str) -> Response:
    """A person flags a patient the rules exclude for a second look (or withdraws the flag).
    The verdict stays the rules'; no ResearchSubject is written."""
    form = await auth.checked_form(request)
    person, row, ruleset = await _follow_up_target(request, patient_id, form)
    store = _store(request)
    if _text(form.get("withdraw")) == "1":
        await asyncio.to_thread(store.flag_for_review, row.id, person.name, "", "", True)
        return _done(request, patient_id, row.trial, "Flag for review withdrawn.")
    if row.verdict in FLAGGED:
        problem = "Not saved: the rules do not exclude this patient; record a decision instead."
        return await _follow_refused(request, person, patient_id, row.trial, problem, form)
    reason = _text(form.get("reason")).strip()
    note = _text(form.get("note")).strip()
    if reason not in _reasons(request).review:
        problem = "Not saved: choose why the patient should be reviewed."
        return await _follow_refused(request, person, patient_id, row.trial, problem, form)
    if len(note) > NOTE_MAX:
        problem = f"Not saved: the note is longer than {NOTE_MAX} characters."
        return await _follow_refused(request, person, patient_id, row.trial, problem, form)
    await asyncio.to_thread(store.flag_for_review, row.id, person.name, reason, note)
    return _done(
        request,
        patient_id,
        row.trial,
        f"Flagged for review for {ruleset.trial.acronym}. The rules' verdict stays as it is.",
    )


# --- signing in and out -------------------------------------------------------------------------


@router.get("/login", name="login")
async def login_page(request: Request) -> Response:
    return render(request, "login.html", None, page="login", problem="")


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _too_many(request: Request, name: str, wait: float) -> Response:
    seconds = max(1, math.ceil(wait))
    response = render(
        request,
        "login.html",
        None,
        status_code=429,
        page="login",
        problem=f"Too many failed sign-ins. Try again in {seconds} second"
        f"{'' if seconds == 1 else 's'}.",
        username=name,
    )
    response.headers["Retry-After"] = str(seconds)
    return response


def _sign_in_limits(request: Request) -> SignInLimits:
    """One per web worklist (it remembers the waits it has read)."""
    limits: SignInLimits | None = getattr(request.app.state, "sign_in_limits", None)
    if limits is None:
        policy = request.app.state.sign_in_policy
        limits = request.app.state.sign_in_limits = SignInLimits(
            _service(request).store.engine, policy
        )
    return limits


@router.post("/login", name="login_submit")
async def login_submit(request: Request) -> Response:
    settings = _settings(request)
    if settings.ui_mode != "local":
        raise HTTPException(404, "Sign in with the hospital account.")
    limits = _sign_in_limits(request)
    address = address_key(_client_address(request))
    # An address known to wait is refused before its form is even read: a flood from one
    # place costs next to nothing.
    known = limits.known_wait([address])
    if known > 0:
        # Answered after a pause: a client that asks again at once asks a second later.
        await asyncio.sleep(min(known, REFUSAL_PAUSE_SECONDS))
        return _too_many(request, "", max(known - REFUSAL_PAUSE_SECONDS, 1))
    form = await auth.checked_form(request)
    name = _text(form.get("username")).strip()
    password = _text(form.get("password"))
    store = _store(request)
    checker: PasswordChecker = request.app.state.passwords
    keys = [name_key(name), address]
    # Waiting now: refused before it queues for a hash.
    wait = limits.known_wait(keys) or await asyncio.to_thread(limits.wait_seconds, keys)
    if wait > 0:
        await asyncio.sleep(min(wait, REFUSAL_PAUSE_SECONDS))
        return _too_many(request, name, max(wait - REFUSAL_PAUSE_SECONDS, 1))
    async with checker.slot():
        # Again once it is this attempt's turn: the attempts queued meanwhile all count.
        wait = await asyncio.to_thread(limits.wait_seconds, keys)
        if wait > 0:
            return _too_many(request, name, wait)
        user = await asyncio.to_thread(store.user, name) if name else None
        valid = await checker.verify(user.password_hash if user else None, password)
        if user is None or not valid:
            await asyncio.to_thread(limits.record_failure, keys)
        else:
            await asyncio.to_thread(limits.record_success, keys[0])
    if user is None or not valid:
        return render(
            request,
            "login.html",
            None,
            status_code=401,
            page="login",
            problem="Unknown name or wrong password.",
            username=name,
        )
    try:
        access = Access.stored(user.role, user.trials)
    except RoleError:
        raise HTTPException(403, "Your account has roles this version does not know.") from None
    target = await auth.sign_in(request, store, user.name, access, settings.session_hours)
    return RedirectResponse(target, status_code=303)


@router.get("/login/oidc", name="login_oidc")
async def login_oidc(request: Request) -> Response:
    settings = _settings(request)
    client = request.app.state.oauth
    if settings.ui_mode != "oidc" or client is None:
        raise HTTPException(404, "Sign-in with an identity provider is not configured.")
    if settings.public_url:
        callback = f"{settings.public_url.rstrip('/')}/ui/auth/callback"
    else:
        callback = str(request.url_for("auth_callback"))
    response: Response = await client.authorize_redirect(request, callback)
    return response


@router.get("/auth/callback", name="auth_callback")
async def auth_callback(request: Request) -> Response:
    from authlib.integrations.starlette_client import OAuthError

    settings = _settings(request)
    client = request.app.state.oauth
    if client is None:
        raise HTTPException(404, "Sign-in with an identity provider is not configured.")
    try:
        token = await client.authorize_access_token(request)
    except OAuthError as error:
        log.warning("identity provider sign-in failed: %s", error.error)
        raise HTTPException(401, "The identity provider did not sign you in.") from error
    claims = dict(token.get("userinfo") or {})
    identity = auth.identity_of(claims, settings)
    if identity is None:
        log.warning("identity provider sign-in refused: the ID token has no iss or sub")
        raise HTTPException(401, "The identity provider did not say who you are.")
    store = _store(request)
    linked = await asyncio.to_thread(store.user_by_identity, identity.issuer, identity.subject)
    same_name = None if linked else await asyncio.to_thread(store.user, identity.name)
    granted = auth.oidc_person(identity, claims, linked, same_name, settings)
    if isinstance(granted, auth.Refusal):
        if granted.unlinked_user is not None:
            # For the administrator: the one command that lets this person in again.
            log.warning(
                "sign-in refused: %s; if this account is theirs, link it with: %s",
                granted.log,
                auth.link_command(identity, granted.unlinked_user),
            )
        else:
            log.warning("sign-in refused: %s", granted.log)
        return render(
            request,
            "login.html",
            None,
            status_code=403,
            page="login",
            problem="Your account has no access to prescreen. Ask its administrator.",
            link_command=auth.link_command(identity),
        )
    name, access = granted
    target = await auth.sign_in(request, store, name, access, settings.session_hours)
    return RedirectResponse(target, status_code=303)


@router.post("/logout", name="logout")
async def logout(request: Request) -> Response:
    await auth.checked_form(request)
    await auth.sign_out(request, _store(request))
    return RedirectResponse(request.url_for("signed_out").path, status_code=303)


@router.get("/signed-out", name="signed_out")
async def signed_out(request: Request) -> Response:
    return render(request, "signed_out.html", None, page="signed-out")
