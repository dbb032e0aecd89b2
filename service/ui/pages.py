"""The pages: portfolio overview, worklist, patient page, decisions, signing in and out."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import RedirectResponse
from markupsafe import Markup

from service.api.decisions import (
    DecisionConflictError,
    DecisionError,
    find_subject,
    record_decision,
)
from service.api.engine import ScreeningService
from service.errors import FhirServerError, error_kind
from service.roles import Access, RoleError
from service.ruleset.loader import RuleSet
from service.settings import Settings
from service.state.models import Candidate
from service.state.signin import SignInLimits, address_key, name_key
from service.state.worklist import HistoryEntry, WorklistRow, WorklistStore, criterion_results
from service.ui import auth
from service.ui.evidence import Displays, Evidence, read_evidence, unavailable
from service.ui.funnel import Step, attrition, funnel_svg
from service.ui.passwords import PasswordChecker
from service.ui.vocabulary import (
    DECISION_CHOICES,
    OPEN_STATUSES,
    STATUS_LABELS,
    ineligible_reasons,
    status_label,
)

log = logging.getLogger(__name__)
router = APIRouter()

PAGE_SIZE = 25
MAX_PAGE = (2**31 - 1) // PAGE_SIZE
API_CLIENT = "An API client"  # decisions recorded through the API without a person's name
NOTE_MAX = 1000
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
            **context,
        },
        status_code=status_code,
    )
    return response


def _text(value: Any) -> str:
    """A form field as text: an uploaded file where text was expected counts as empty, and a
    NUL character (which no name or note holds, and PostgreSQL refuses) is dropped."""
    return value.replace("\x00", "") if isinstance(value, str) else ""


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""


# --- overview -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialOverview:
    id: str
    acronym: str
    title: str
    nct_id: str
    counts: list[tuple[str, int]]
    steps: list[Step]
    chart: Markup


def _criteria_of(ruleset: RuleSet) -> list[tuple[str, str, str]]:
    return [(c.id, c.kind, c.text) for c in ruleset.criteria]


async def _funnel(request: Request, trial: str, ruleset: RuleSet) -> list[Step]:
    """Recomputed only when the trial's rows changed (count or latest update)."""
    store = _store(request)
    fingerprint = await asyncio.to_thread(store.trial_fingerprint, trial)
    cache: dict[str, tuple[Any, list[Step]]] = request.app.state.funnels
    cached = cache.get(trial)
    if cached and cached[0] == fingerprint:
        return cached[1]
    steps = await asyncio.to_thread(
        lambda: attrition(_criteria_of(ruleset), store.results_of(trial))
    )
    cache[trial] = (fingerprint, steps)
    return steps


@router.get("/", name="overview")
async def overview(request: Request) -> Response:
    person = await _person(request)
    service = _service(request)
    counts = await asyncio.to_thread(_store(request).status_counts)
    trials = []
    for trial, ruleset in service.rulesets.items():
        steps = await _funnel(request, trial, ruleset)
        by_status = counts.get(trial, {})
        ordered = [(s, by_status[s]) for s in STATUS_LABELS if s in by_status]
        ordered += sorted((s, n) for s, n in by_status.items() if s not in STATUS_LABELS)
        trials.append(
            TrialOverview(
                trial,
                ruleset.trial.acronym,
                ruleset.trial.title,
                ruleset.trial.nct_id,
                ordered,
                steps,
                funnel_svg(steps, f"{ruleset.trial.acronym}: attrition", f"funnel-{trial}"),
            )
        )
    return render(request, "overview.html", person, trials=trials, page="overview")


# --- worklist -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorklistLine:
    row: WorklistRow
    acronym: str
    to_check: int
    what_changed: list[str]
    link: str


def _what_changed(row: WorklistRow) -> list[str]:
    """Since this person last opened the patient: verdict, status and criteria that moved."""
    seen, candidate = row.seen, row.candidate
    if row.change != "changed" or seen is None:
        return []
    changes = []
    if seen.verdict != candidate.verdict:
        changes.append(f"verdict {status_label(seen.verdict)} → {status_label(candidate.verdict)}")
    if seen.status != candidate.status:
        changes.append(f"status {status_label(seen.status)} → {status_label(candidate.status)}")
    now_results = criterion_results(candidate.result)
    for cid, result in now_results.items():
        before = seen.results.get(cid)
        if before is not None and before != result:
            changes.append(f"{cid} {before} → {result}")
    return changes or ["re-screened or decided by someone else"]


def _parse_since(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


@router.get("/worklist", name="worklist")
async def worklist(
    request: Request,
    trial: str = "",
    status: str = "open",
    since: str = "",
    changed: str = "",
    sort: str = "newest",
    page: int = 1,
) -> Response:
    person = await _reader_of_patients(request)
    service = _service(request)
    problems = []
    trial = trial if trial in service.rulesets else ""
    if status not in ("open", "any", *STATUS_LABELS):
        status = "open"
    since_day = _parse_since(since)
    if since and since_day is None:
        problems.append("“Flagged since” must be a date (YYYY-MM-DD); it was ignored.")
        since = ""
    statuses = list(OPEN_STATUSES) if status == "open" else [] if status == "any" else [status]
    page = min(max(page, 1), MAX_PAGE)  # an offset the databases' integers hold
    result = await asyncio.to_thread(
        _store(request).worklist,
        person.name,
        trials=[trial] if trial else [],
        statuses=statuses,
        since=datetime.combine(since_day, datetime.min.time()) if since_day else None,
        changed_only=changed == "1",
        newest_first=sort != "oldest",
        offset=(page - 1) * PAGE_SIZE,
        limit=PAGE_SIZE,
    )
    pages = max(1, -(-result.total // PAGE_SIZE))
    lines = []
    for row in result.rows:
        ruleset = service.rulesets.get(row.candidate.trial)
        manual = {c.id for c in ruleset.criteria if c.manual} if ruleset else set()
        results = criterion_results(row.candidate.result)
        lines.append(
            WorklistLine(
                row,
                ruleset.trial.acronym if ruleset else row.candidate.trial,
                sum(1 for cid, r in results.items() if r == "unknown" and cid not in manual),
                _what_changed(row),
                request.url_for("patient", patient_id=row.candidate.patient_id).path
                + "?"
                + urlencode({"trial": row.candidate.trial}),
            )
        )
    filters = {"trial": trial, "status": status, "since": since, "changed": changed, "sort": sort}

    def page_link(number: int) -> str:
        query = {k: v for k, v in filters.items() if v} | {"page": str(number)}
        return request.url_for("worklist").path + "?" + urlencode(query)

    return render(
        request,
        "worklist.html",
        person,
        page="worklist",
        lines=lines,
        result=result,
        filters=filters,
        problems=problems,
        trials=[(t, r.trial.acronym) for t, r in service.rulesets.items()],
        statuses=list(STATUS_LABELS.items()),
        page_number=page,
        pages=pages,
        previous_link=page_link(page - 1) if page > 1 else "",
        next_link=page_link(page + 1) if page < pages else "",
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
class TrialPanel:
    trial: str
    acronym: str
    title: str
    candidate: Candidate
    criteria: list[CriterionView]
    to_check: list[CriterionView]
    history: list[HistoryEntry]
    subject_status: str | None = None
    subject_version: str | None = None
    subject_problem: str = ""
    may_decide: bool = False
    reasons: list[str] = field(default_factory=list)
    notice: str = ""
    notice_kind: str = "status"  # status | error


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


async def _patient_page(
    request: Request,
    person: auth.Person,
    patient_id: str,
    focus: str,
    notices: dict[str, tuple[str, str]] | None = None,
    status_code: int = 200,
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
    evidence, subjects = await asyncio.gather(
        _evidence(service, references, request.app.state.displays),
        asyncio.gather(*(_subject(service, r.trial, patient_id) for r in rows)),
    )
    panels = []
    for row, (subject, problem) in zip(rows, subjects, strict=True):
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
        notice, kind = (notices or {}).get(row.trial, ("", "status"))
        flash = request.session.get(auth.FLASH)
        if not notice and isinstance(flash, dict) and flash.get("trial") == row.trial:
            notice, kind = str(flash.get("text", "")), "status"
            request.session.pop(auth.FLASH, None)
        panels.append(
            TrialPanel(
                trial=row.trial,
                acronym=ruleset.trial.acronym,
                title=ruleset.trial.title,
                candidate=row,
                criteria=criteria,
                to_check=[c for c in criteria if c.result == "unknown"],
                history=await asyncio.to_thread(store.history, row.id),
                subject_status=str(subject.get("status", "")) if subject else None,
                subject_version=(subject or {}).get("meta", {}).get("versionId"),
                subject_problem=problem,
                may_decide=person.may_decide(row.trial),
                reasons=ineligible_reasons(ruleset),
                notice=notice,
                notice_kind=kind,
            )
        )
    await asyncio.to_thread(store.mark_seen, person.name, rows)
    return render(
        request,
        "patient.html",
        person,
        status_code=status_code,
        page="patient",
        patient_id=patient_id,
        patient=evidence.get(f"Patient/{patient_id}"),
        panels=panels,
        choices=[(c, status_label(c)) for c in DECISION_CHOICES],
        api_client=API_CLIENT,
        when=when,
    )


@router.get("/patients/{patient_id}", name="patient")
async def patient(request: Request, patient_id: str, trial: str = "") -> Response:
    person = await _reader_of_patients(request)
    return await _patient_page(request, person, patient_id, trial)


def _conflict_text(conflict: DecisionConflictError) -> str:
    theirs = status_label(conflict.current_status)
    last = conflict.last_decision
    if last is not None and last.status == conflict.current_status:
        who = f"{last.decided_by or API_CLIENT} recorded “{theirs}” at {when(last.decided_at)}"
    else:
        who = f"The status was changed to “{theirs}” on the FHIR server"
    return (
        f"Not saved: {who} while this page was open. Their decision stands; "
        "review it below and decide again if needed."
    )


@router.post("/patients/{patient_id}/decision", name="decide")
async def decide(request: Request, patient_id: str) -> Response:
    person = await _reader_of_patients(request)
    form = await auth.checked_form(request)
    service = _service(request)
    trial = _text(form.get("trial"))
    status = _text(form.get("status"))
    reason = _text(form.get("reason")).strip()
    note = _text(form.get("note")).strip()
    expected = _text(form.get("expected_version")) or None
    ruleset = service.rulesets.get(trial)
    if ruleset is None:
        raise HTTPException(404, "This trial is not served here.")
    if not person.may_decide(trial):
        raise HTTPException(403, "Your role does not allow recording decisions for this trial.")
    rows = await asyncio.to_thread(_store(request).candidates_of_patient, patient_id)
    row = next((r for r in rows if r.trial == trial), None)
    if row is None:
        raise HTTPException(404, "No screening result for this patient.")

    problem = ""
    if status not in DECISION_CHOICES:
        problem = "Choose a decision."
    elif status == "ineligible" and reason not in ineligible_reasons(ruleset):
        problem = "Choose why the patient is ineligible."
    elif len(note) > NOTE_MAX:
        problem = f"The note is longer than {NOTE_MAX} characters."
    if problem:
        return await _patient_page(
            request, person, patient_id, trial, {trial: (problem, "error")}, 422
        )
    try:
        await record_decision(
            service,
            row.id,
            status,
            expected_version=expected,
            decided_by=person.name,
            reason=reason if status == "ineligible" else "",
            note=note,
        )
    except DecisionConflictError as conflict:
        return await _patient_page(
            request, person, patient_id, trial, {trial: (_conflict_text(conflict), "error")}, 409
        )
    except DecisionError as error:
        return await _patient_page(
            request, person, patient_id, trial, {trial: (error.message, "error")}, error.status
        )
    except FhirServerError as error:  # the server is down or failing: nothing was written
        log.warning("recording a decision failed: %s", error_kind(error))
        problem = "Not saved: the FHIR server could not be reached. Try again in a moment."
        return await _patient_page(
            request, person, patient_id, trial, {trial: (problem, "error")}, 502
        )
    request.session[auth.FLASH] = {
        "trial": trial,
        "text": f"Recorded for {ruleset.trial.acronym}: {status_label(status)}.",
    }
    target = (
        request.url_for("patient", patient_id=patient_id).path + "?" + urlencode({"trial": trial})
    )
    return RedirectResponse(target, status_code=303)


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
