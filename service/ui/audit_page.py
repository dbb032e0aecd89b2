"""The access audit for administrators: who viewed which patient's page, recorded which
decision, exported which list; newest first, a page at a time, by person, patient or action."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request, Response

from service.fhir.ids import is_fhir_id
from service.state.audit import ACTIONS, AuditLog
from service.ui import auth
from service.ui.pages import _person, _service, render

router = APIRouter()
AUDIT_PAGE_SIZE = 50
LAST_PAGE = 1_000_000  # past it, the offset would outgrow the database's integers
ACTION_LABELS = {
    "view": "Viewed the patient page",
    "decision": "Recorded a decision",
    "export": "Exported a list",
}


async def _administrator(request: Request) -> auth.Person:
    person = await _person(request)
    if not person.access.may_administer():
        raise HTTPException(403, "Only an administrator may read the access audit.")
    return person


def _detail_text(action: str, detail: dict[str, Any]) -> str:
    if action == "export":
        filters = ", ".join(
            f"{k}={v}" for k, v in sorted((detail.get("filters") or {}).items()) if v
        )
        return f"{detail.get('rows', 0)} rows; filters: {filters or 'none'}"
    if action == "decision":
        return f"status: {detail.get('status', '')}"
    return ""


@router.get("/audit", name="audit")
async def audit_page(request: Request) -> Response:
    person = await _administrator(request)
    params = request.query_params
    # A NUL character is in no name (and PostgreSQL refuses it).
    user = params.get("user", "").replace("\x00", "").strip()[:128]
    patient = params.get("patient", "").strip()[:64]
    action = params.get("action", "")
    problems = []
    if action not in ("", *ACTIONS):
        problems.append("Unknown action: showing every action.")
        action = ""
    if patient and not is_fhir_id(patient):
        problems.append("A patient is named by its FHIR id (letters, digits, '-' and '.').")
        patient = ""
    try:
        number = min(max(1, int(params.get("page", "1"))), LAST_PAGE)
    except ValueError:
        number = 1
    log = AuditLog(_service(request).store.engine)
    result = await asyncio.to_thread(
        log.page,
        user_name=user,
        patient_id=patient,
        action=action,
        offset=(number - 1) * AUDIT_PAGE_SIZE,
        limit=AUDIT_PAGE_SIZE,
    )
    pages = max(1, -(-result.total // AUDIT_PAGE_SIZE))
    filters = {k: v for k, v in (("user", user), ("patient", patient), ("action", action)) if v}
    base = request.url_for("audit").path

    def link(page: int) -> str:
        return base + "?" + urlencode(filters | {"page": str(page)})

    return render(
        request,
        "audit.html",
        person,
        page="audit",
        rows=result.rows,
        total=result.total,
        user=user,
        patient=patient,
        action=action,
        actions=ACTION_LABELS,
        problems=problems,
        page_number=min(number, pages),
        pages=pages,
        previous_link=link(number - 1) if number > 1 else "",
        next_link=link(number + 1) if number < pages else "",
        detail_text=_detail_text,
        sending=await asyncio.to_thread(log.fhir_states),
    )
