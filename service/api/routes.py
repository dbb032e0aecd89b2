"""Screenings, population runs, notifications and the coordinator worklist."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from service.api.decisions import (
    DECISIONS,
    DecisionConflictError,
    DecisionError,
    record_decision,
)
from service.api.engine import ScreeningService
from service.api.security import Authenticator

router = APIRouter()


def _service(request: Request) -> ScreeningService:
    service: ScreeningService = request.app.state.service
    return service


def _auth(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


def _trial(service: ScreeningService, trial: str) -> None:
    if trial not in service.rulesets:
        raise HTTPException(404, f"unknown trial '{trial}' (served: {', '.join(service.rulesets)})")


def _as_of(value: date | None) -> date:
    return value or datetime.now(UTC).date()


# --- on-demand screening ---------------------------------------------------------------------


class ScreeningRequest(BaseModel):
    trial: str = Field(examples=["relieve"])
    patients: list[str] = Field(min_length=1, max_length=100, description="Patient ids")
    as_of: date | None = Field(default=None, description="reference date (default today)")
    write_back: bool = Field(default=True, description="write ResearchSubjects back")


@router.post("/screenings", summary="Screen one or a few patients now (live from FHIR)")
async def post_screenings(body: ScreeningRequest, request: Request) -> dict[str, Any]:
    _auth(request).require(request, "screen")
    service = _service(request)
    _trial(service, body.trial)
    verdicts = await service.screen(body.trial, body.patients, _as_of(body.as_of), body.write_back)
    return {"verdicts": verdicts}


# --- population runs -------------------------------------------------------------------------


class RunRequest(BaseModel):
    trial: str
    source: Literal["fhir", "ndjson"] = "fhir"
    path: str | None = Field(default=None, description="NDJSON folder on the service host")
    patients: list[str] = Field(default=[], description="FHIR runs: ids (default: the cohort)")
    as_of: date | None = None
    write_back: bool = True


def _run_json(run: Any) -> dict[str, Any]:
    return {
        "id": run.id,
        "trial": run.trial,
        "source": run.source,
        "as_of": run.as_of,
        "status": run.status,
        "progress": {"done": run.done, "total": run.total},
        "counts": run.counts,
        "error": run.error,
        "created_at": run.created_at.isoformat(),
        "updated_at": run.updated_at.isoformat(),
    }


@router.post("/runs", status_code=202, summary="Start a population run")
async def post_runs(body: RunRequest, request: Request) -> dict[str, Any]:
    _auth(request).require(request, "runs")
    service = _service(request)
    _trial(service, body.trial)
    if body.source == "ndjson" and not body.path:
        raise HTTPException(422, "an NDJSON run needs 'path'")
    detail = body.path if body.source == "ndjson" else ",".join(body.patients)
    run = await asyncio.to_thread(
        service.store.create_run,
        body.trial,
        body.source,
        detail or "",
        _as_of(body.as_of).isoformat(),
        body.write_back,
    )
    service.spawn(service.execute_run(run.id))
    return _run_json(run)


@router.get("/runs/{run_id}", summary="A run's progress and counts")
async def get_run(run_id: str, request: Request) -> dict[str, Any]:
    _auth(request).require(request, "runs")
    run = await asyncio.to_thread(_service(request).store.get_run, run_id)
    if run is None:
        raise HTTPException(404, "no such run")
    return _run_json(run)


@router.get("/runs/{run_id}/results", summary="A run's verdicts, a page at a time")
async def get_run_results(
    run_id: str,
    request: Request,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    _auth(request).require(request, "runs")
    store = _service(request).store
    results = await asyncio.to_thread(store.run_results, run_id, offset, limit)
    return {"offset": offset, "limit": limit, "verdicts": results}


# --- Subscription notifications --------------------------------------------------------------


async def _notification(request: Request, path_reference: str | None) -> Response:
    _auth(request).require(request, "notify")
    body = await request.body()
    resources: list[dict[str, Any]] = []
    references: list[str] = [path_reference] if path_reference else []
    if body.strip():
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise HTTPException(400, "notification body is not JSON") from exc
        if isinstance(payload, dict) and payload.get("resourceType") == "Bundle":
            for entry in payload.get("entry", []):
                resource = entry.get("resource")
                if isinstance(resource, dict) and resource.get("resourceType") not in (
                    "Parameters",
                    "SubscriptionStatus",
                ):
                    resources.append(resource)
                elif entry.get("fullUrl") and not resource:
                    references.append("/".join(str(entry["fullUrl"]).split("/")[-2:]))
        elif isinstance(payload, dict) and payload.get("resourceType"):
            if len(payload) <= 3 and "id" in payload and path_reference is None:
                references.append(f"{payload['resourceType']}/{payload['id']}")  # id-only
            else:
                resources.append(payload)
    await _service(request).notified(resources, references)
    return Response(status_code=200)


@router.post("/notifications", summary="R4 rest-hook Subscription notification (any payload)")
async def post_notification(request: Request) -> Response:
    return await _notification(request, None)


@router.put(
    "/notifications/{resource_type}/{resource_id}",
    summary="Rest-hook notification that PUTs the resource at [endpoint]/[type]/[id]",
)
async def put_notification(resource_type: str, resource_id: str, request: Request) -> Response:
    return await _notification(request, f"{resource_type}/{resource_id}")


@router.post(
    "/notifications/{resource_type}/{resource_id}",
    summary="Rest-hook notification that POSTs to [endpoint]/[type]/[id]",
)
async def post_typed_notification(
    resource_type: str, resource_id: str, request: Request
) -> Response:
    return await _notification(request, f"{resource_type}/{resource_id}")


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


@router.get("/candidates", summary="The worklist: candidates by trial, status and date")
async def get_candidates(
    request: Request,
    trial: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    _auth(request).require(request, "candidates")
    store = _service(request).store
    since_naive = since.astimezone(UTC).replace(tzinfo=None) if since and since.tzinfo else since
    rows = await asyncio.to_thread(store.candidates, trial, status, since_naive, offset, limit)
    return {"candidates": [_candidate_json(r) for r in rows]}


class Decision(BaseModel):
    status: Literal[DECISIONS]  # type: ignore[valid-type]
    note: str | None = Field(default=None, max_length=1000)
    expected_version: str | None = Field(
        default=None,
        max_length=64,
        description="the ResearchSubject versionId the decision was made on: "
        "if it changed meanwhile, 409 with the other decision instead of overwriting it",
    )


@router.post("/candidates/{candidate_id}/decision", summary="Record a coordinator's decision")
async def post_decision(candidate_id: int, body: Decision, request: Request) -> Response:
    principal = _auth(request).require(request, "decide")
    try:
        outcome = await record_decision(
            _service(request), candidate_id, body.status, expected_version=body.expected_version
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
    return JSONResponse(
        {
            "id": outcome.candidate_id,
            "status": outcome.status,
            "version": outcome.version,
            "decided_by": principal.name,
        }
    )
