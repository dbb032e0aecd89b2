"""Screenings, population runs, notifications and the coordinator worklist."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi import Path as FastApiPath
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from service.api.audit import record_access
from service.api.decisions import (
    DECISIONS,
    DecisionConflictError,
    DecisionError,
    record_decision,
)
from service.api.engine import ScreeningService
from service.api.folders import allowed_ndjson_folder
from service.api.notifications import (
    BadNotificationError,
    Notified,
    path_reference,
    read_notification,
)
from service.api.screening_log import file_name, write_log
from service.api.security import Authenticator
from service.errors import FhirServerError, error_kind
from service.fhir.ids import FHIR_ID, is_fhir_id
from service.state.audit import DECISION, EXPORT, AuditLog
from service.state.worklist import FLAGGED, WorklistFilters, WorklistStore

router = APIRouter()


def _service(request: Request) -> ScreeningService:
    service: ScreeningService = request.app.state.service
    return service


def _auth(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


async def _audit(
    request: Request,
    who: str,
    action: str,
    *,
    patient_id: str = "",
    trial: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    """Into the access audit (service.state.audit), as done through the API."""
    service = _service(request)
    await record_access(
        request,
        AuditLog(service.store.engine),
        service.settings,
        who,
        action,
        "api",
        patient_id=patient_id,
        trial=trial,
        detail=detail,
    )


def _trial(service: ScreeningService, trial: str) -> None:
    if trial not in service.rulesets:
        raise HTTPException(404, f"unknown trial '{trial}' (served: {', '.join(service.rulesets)})")


def _as_of(value: date | None) -> date:
    return value or datetime.now(UTC).date()


# Integers the database columns hold (32-bit in PostgreSQL): larger ones are a 422, not a 500.
MAX_INT = 2**31 - 1
# Reference dates a rule window can be computed from without leaving the calendar.
EARLIEST_AS_OF, LATEST_AS_OF = date(1900, 1, 1), date(2999, 12, 31)


def _not_only_dots(value: str) -> str:
    if not is_fhir_id(value):
        raise ValueError("'.' and '..' are not usable as ids")
    return value


FhirId = Annotated[
    str, StringConstraints(pattern=f"^{FHIR_ID.pattern}$"), AfterValidator(_not_only_dots)
]


def _reasonable_as_of(value: date | None) -> date | None:
    if value is not None and not EARLIEST_AS_OF <= value <= LATEST_AS_OF:
        raise ValueError(f"as_of must lie between {EARLIEST_AS_OF} and {LATEST_AS_OF}")
    return value


# Rule parameters are the protocol's in the service: what it screens may be written to the EHR,
# and verdicts under other parameters never are (``prescreen screen --set`` is offline only).
# A request that tries is refused rather than silently screened with the protocol's values.
PARAMETER_KEYS = frozenset({"set", "parameters", "params", "overrides"})


def _refuse_parameters(data: Any) -> Any:
    if isinstance(data, dict):
        given = sorted(PARAMETER_KEYS & set(data))
        if given:
            raise ValueError(
                f"'{given[0]}': rule parameters cannot be set through the service; it screens "
                "with the protocol's values (prescreen screen --set is for offline runs)"
            )
    return data


# --- on-demand screening ---------------------------------------------------------------------


class ScreeningRequest(BaseModel):
    trial: str = Field(examples=["relieve"])
    patients: list[FhirId] = Field(min_length=1, max_length=100, description="Patient ids")
    as_of: date | None = Field(default=None, description="reference date (default today)")
    write_back: bool = Field(default=True, description="write ResearchSubjects back")

    _as_of_range = field_validator("as_of")(_reasonable_as_of)
    _no_parameters = model_validator(mode="before")(_refuse_parameters)


@router.post("/screenings", summary="Screen one or a few patients now (live from FHIR)")
async def post_screenings(body: ScreeningRequest, request: Request) -> dict[str, Any]:
    _auth(request).require(request, "screen")
    service = _service(request)
    _trial(service, body.trial)
    try:
        verdicts = await service.screen(
            body.trial, body.patients, _as_of(body.as_of), body.write_back
        )
    except FhirServerError as exc:
        # The FHIR server failed or refused: say so by kind (its words could quote patient data).
        raise HTTPException(
            502, f"the FHIR server could not serve the screening: {error_kind(exc)}"
        ) from exc
    return {"verdicts": verdicts}


# --- population runs -------------------------------------------------------------------------


class RunRequest(BaseModel):
    trial: str
    source: Literal["fhir", "ndjson"] = "fhir"
    path: str | None = Field(default=None, description="NDJSON folder on the service host")
    patients: list[FhirId] = Field(
        default=[], max_length=100_000, description="FHIR runs: ids (default: the cohort)"
    )
    as_of: date | None = None
    write_back: bool = True

    _as_of_range = field_validator("as_of")(_reasonable_as_of)
    _no_parameters = model_validator(mode="before")(_refuse_parameters)


def _run_json(run: Any) -> dict[str, Any]:
    return {
        "id": run.id,
        "trial": run.trial,
        "source": run.source,
        "as_of": run.as_of,
        "status": run.status,
        "progress": {"done": run.done, "total": run.total},
        "counts": run.counts,
        "input_issues": run.input_issues or {},
        "error": run.error,
        "created_at": run.created_at.isoformat(),
        "updated_at": run.updated_at.isoformat(),
    }


# OpenAPI links: how a client (or an API fuzzer) goes from one answer to the next call.
_RUN_LINKS = {
    "responses": {
        "202": {
            "links": {
                "GetRun": {
                    "operationId": "getRun",
                    "parameters": {"run_id": "$response.body#/id"},
                },
                "GetRunResults": {
                    "operationId": "getRunResults",
                    "parameters": {"run_id": "$response.body#/id"},
                },
            }
        }
    }
}
_CANDIDATE_LINKS = {
    "responses": {
        "200": {
            "links": {
                "PostDecision": {
                    "operationId": "postDecision",
                    "parameters": {"candidate_id": "$response.body#/candidates/0/id"},
                }
            }
        }
    }
}


@router.post(
    "/runs",
    status_code=202,
    summary="Start a population run",
    operation_id="postRun",
    openapi_extra=_RUN_LINKS,
)
async def post_runs(body: RunRequest, request: Request) -> dict[str, Any]:
    _auth(request).require(request, "runs")
    service = _service(request)
    _trial(service, body.trial)
    if body.source == "ndjson":
        folder = allowed_ndjson_folder(body.path, service.settings.ndjson_roots)
        if folder is None:
            # One answer for missing and not allowed: the API must not reveal the host's files.
            raise HTTPException(
                422, "'path' is not an NDJSON folder under the service's allowed folders"
            )
        detail = str(folder)
    else:
        detail = ",".join(body.patients)
    run = await asyncio.to_thread(
        service.store.create_run,
        body.trial,
        body.source,
        detail,
        _as_of(body.as_of).isoformat(),
        body.write_back,
    )
    service.spawn(service.execute_run(run.id))
    return _run_json(run)


@router.post(
    "/clinic-schedule/run",
    summary="Screen the coming appointments now and alert before each visit",
    operation_id="postClinicScheduleRun",
)
async def post_clinic_schedule_run(request: Request) -> dict[str, Any]:
    """What the daily clinic screening does, now: the appointments of the next
    PRESCREEN_CLINIC_SCHEDULE_DAYS_AHEAD days screened for the schedule's trials; a visit
    already alerted is not alerted again. Answers what was read and the verdict counts."""
    _auth(request).require(request, "runs")
    schedule = _service(request).clinic_schedule
    try:
        return await schedule.run(schedule.today())
    except FhirServerError as exc:
        raise HTTPException(502, f"the FHIR server failed: {error_kind(exc)}") from exc


@router.get("/runs/{run_id}", summary="A run's progress and counts", operation_id="getRun")
async def get_run(run_id: str, request: Request) -> dict[str, Any]:
    _auth(request).require(request, "runs")
    run = await asyncio.to_thread(_service(request).store.get_run, run_id)
    if run is None:
        raise HTTPException(404, "no such run")
    return _run_json(run)


@router.get(
    "/runs/{run_id}/results",
    summary="A run's verdicts, a page at a time",
    operation_id="getRunResults",
)
async def get_run_results(
    run_id: str,
    request: Request,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    _auth(request).require(request, "runs")
    store = _service(request).store
    if await asyncio.to_thread(store.get_run, run_id) is None:
        raise HTTPException(404, "no such run")
    results = await asyncio.to_thread(store.run_results, run_id, offset, limit)
    return {"offset": offset, "limit": limit, "verdicts": results}


# --- Subscription notifications --------------------------------------------------------------


async def _notification(
    request: Request, resource_type: str | None = None, resource_id: str | None = None
) -> Response:
    _auth(request).require(request, "notify")
    body = await request.body()
    try:
        in_path = (
            path_reference(resource_type, resource_id)
            if resource_type is not None and resource_id is not None
            else None
        )
        notified = Notified(references=[in_path] if in_path else [])
        if body.strip():
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise BadNotificationError("the notification body is not JSON") from exc
            notified = read_notification(payload, in_path)
    except BadNotificationError as bad:
        raise HTTPException(400, str(bad)) from bad
    await _service(request).notified(notified.resources, notified.references)
    return Response(status_code=200)


@router.post("/notifications", summary="R4 rest-hook Subscription notification (any payload)")
async def post_notification(request: Request) -> Response:
    return await _notification(request)


@router.put(
    "/notifications/{resource_type}/{resource_id}",
    summary="Rest-hook notification that PUTs the resource at [endpoint]/[type]/[id]",
)
async def put_notification(resource_type: str, resource_id: str, request: Request) -> Response:
    return await _notification(request, resource_type, resource_id)


@router.post(
    "/notifications/{resource_type}/{resource_id}",
    summary="Rest-hook notification that POSTs to [endpoint]/[type]/[id]",
)
async def post_typed_notification(
    resource_type: str, resource_id: str, request: Request
) -> Response:
    return await _notification(request, resource_type, resource_id)


# --- coordinator worklist --------------------------------------------------------------------


def _candidate_json(row: Any) -> dict[str, Any]:
    result = row.result
    return {
        "id": row.id,
        "trial": row.trial,
        "patient": f"Patient/{row.patient_id}",
        "verdict": row.verdict,
        "status": row.status,
        "as_of": row.as_of,
        "updated_at": row.updated_at.isoformat(),
        "criteria": result.get("criteria", {}),
    }


@router.get(
    "/candidates",
    summary="The worklist: candidates by trial, status and date",
    operation_id="getCandidates",
    openapi_extra=_CANDIDATE_LINKS,
)
async def get_candidates(
    request: Request,
    trial: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    _auth(request).require(request, "candidates")
    store = _service(request).store
    try:
        since_naive = (
            since.astimezone(UTC).replace(tzinfo=None) if since and since.tzinfo else since
        )
    except OverflowError as exc:  # 0001-01-01T00:00+14:00 is before the first UTC instant
        raise HTTPException(422, "'since' lies outside the dates this service handles") from exc
    rows = await asyncio.to_thread(store.candidates, trial, status, since_naive, offset, limit)
    return {"candidates": [_candidate_json(r) for r in rows]}


@router.get(
    "/candidates.csv",
    summary="The screening log: the worklist's rows as CSV (UTF-8 with BOM)",
    operation_id="getScreeningLog",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}},
)
async def get_screening_log(
    request: Request,
    trial: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[str, Query(max_length=32)] = "open",
    since: date | None = None,
    sort: Literal["newest", "oldest"] = "newest",
) -> Response:
    """The filters are the web worklist's: ``status`` is ``open`` (candidates and potential
    candidates, the default), ``any`` or one status; ``since`` keeps patients first flagged on
    or after that day. Each download is recorded (who, when, the filters)."""
    principal = _auth(request).require(request, "candidates")
    service = _service(request)
    if trial is not None:
        _trial(service, trial)
    if status not in ("open", "any", *DECISIONS):
        raise HTTPException(422, "'status' must be open, any or a ResearchSubject status")
    if since is not None and not EARLIEST_AS_OF <= since <= LATEST_AS_OF:
        raise HTTPException(422, "'since' lies outside the dates this service handles")
    filters = WorklistFilters(
        trials=[trial] if trial else [],
        statuses=list(FLAGGED) if status == "open" else [] if status == "any" else [status],
        since=datetime.combine(since, datetime.min.time()) if since else None,
        newest_first=sort == "newest",
    )
    store = WorklistStore(service.store.engine)
    rows = await asyncio.to_thread(store.screening_log, principal.name, filters)
    studies = {t: r.trial.nct_id for t, r in service.rulesets.items()}
    body = await asyncio.to_thread(write_log, rows, studies)
    asked = {"trial": trial or "", "status": status, "since": since.isoformat() if since else ""}
    await asyncio.to_thread(
        store.record_export, principal.name, "api", asked | {"sort": sort}, len(rows)
    )
    await _audit(
        request,
        principal.name,
        EXPORT,
        detail={"filters": asked | {"sort": sort}, "rows": len(rows)},
    )
    today = datetime.now(UTC).date().isoformat()
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{file_name(today)}"',
            "Cache-Control": "no-store",
        },
    )


class Decision(BaseModel):
    status: Literal[DECISIONS]  # type: ignore[valid-type]
    note: str | None = Field(default=None, max_length=1000)
    expected_version: str | None = Field(
        default=None,
        max_length=64,
        description="the ResearchSubject versionId the decision was made on: "
        "if it changed meanwhile, 409 with the other decision instead of overwriting it",
    )

    @field_validator("note", "expected_version")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not hold a NUL character")
        return value


@router.post(
    "/candidates/{candidate_id}/decision",
    summary="Record a coordinator's decision",
    operation_id="postDecision",
)
async def post_decision(
    candidate_id: Annotated[int, FastApiPath(ge=1, le=MAX_INT)], body: Decision, request: Request
) -> Response:
    principal = _auth(request).require(request, "decide")
    try:
        outcome = await record_decision(
            _service(request),
            candidate_id,
            body.status,
            expected_version=body.expected_version,
            decided_by=principal.name,
            note=body.note or "",
        )
    except DecisionConflictError as conflict:
        return JSONResponse(
            status_code=409,
            content={
                "detail": conflict.message,
                "current_status": conflict.current_status,
                "current_version": conflict.current_version,
            },
        )
    except DecisionError as error:
        raise HTTPException(error.status, error.message) from error
    decided = await asyncio.to_thread(_service(request).store.candidate, candidate_id)
    await _audit(
        request,
        principal.name,
        DECISION,
        patient_id=decided.patient_id if decided else "",
        trial=decided.trial if decided else "",
        detail={"status": outcome.status},
    )
    return JSONResponse(
        {
            "id": outcome.candidate_id,
            "status": outcome.status,
            "version": outcome.version,
            "decided_by": principal.name,
        }
    )
