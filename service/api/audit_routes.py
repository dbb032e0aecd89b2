"""``GET /audit``: the access audit for an administrator's API key or token (scope ``audit``)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request

from service.api.security import Authenticator
from service.fhir.ids import is_fhir_id
from service.state.audit import AuditLog
from service.state.models import AccessEvent

router = APIRouter()


def _row_json(row: AccessEvent) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at.isoformat() + "Z",
        "user": row.user_name,
        "action": row.action,
        "via": row.via,
        "patient": row.patient_id or None,
        "trial": row.trial or None,
        "detail": row.detail,
        "client_address": row.client_address,
        "audit_event": {
            "id": row.uuid,
            "state": row.fhir_state or None,
            "tries": row.fhir_tries,
            "error": row.fhir_error or None,
        },
    }


@router.get(
    "/audit",
    summary="The access audit: patient pages viewed, decisions recorded, lists exported",
    operation_id="getAccessAudit",
)
async def get_audit(
    request: Request,
    user: Annotated[str, Query(max_length=128)] = "",
    patient: Annotated[str, Query(max_length=64)] = "",
    action: Literal["", "view", "decision", "export"] = "",
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """Newest first; ``user``, ``patient`` and ``action`` filter (exact match)."""
    auth: Authenticator = request.app.state.auth
    auth.require(request, "audit")
    if patient and not is_fhir_id(patient):
        raise HTTPException(422, "'patient' must be a FHIR id")
    if "\x00" in user:
        raise HTTPException(422, "'user' must not hold a NUL character")
    log = AuditLog(request.app.state.service.store.engine)
    page = await asyncio.to_thread(
        log.page, user_name=user, patient_id=patient, action=action, offset=offset, limit=limit
    )
    return {"total": page.total, "entries": [_row_json(r) for r in page.rows]}
