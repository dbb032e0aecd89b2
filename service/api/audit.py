"""The access audit on the service's side: recording an access from a request, and sending the
recorded accesses to the FHIR server as AuditEvents in the background when
``PRESCREEN_AUDIT_TO_FHIR`` is set.

Recording never fails the request it audits on account of the FHIR server: the row is written
to the service's database (as the decisions and the exports are), and sending happens later,
with retries (``service.state.audit``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import Request

from service.errors import error_kind
from service.fhir.auditevent import Access, audit_event
from service.fhir.client import FhirClient, RetryPolicy
from service.settings import Settings
from service.state.audit import AuditLog
from service.state.models import AccessEvent

log = logging.getLogger(__name__)
BATCH = 50


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


async def record_access(
    request: Request,
    log_of: AuditLog,
    settings: Settings,
    user: str,
    action: str,
    via: str,
    *,
    patient_id: str = "",
    trial: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    await asyncio.to_thread(
        log_of.record,
        user,
        action,
        via,
        patient_id=patient_id,
        trial=trial,
        detail=detail,
        client_address=client_address(request),
        to_fhir=settings.audit_to_fhir,
    )


def access_of(row: AccessEvent) -> Access:
    return Access(
        row.uuid,
        row.action,
        row.user_name,
        row.via,
        row.at,
        row.client_address,
        row.patient_id,
        row.trial,
        dict(row.detail or {}),
    )


async def send_due(audit: AuditLog, client: FhirClient, server: str) -> int:
    """Send what is due (one batch); each event with PUT under its own id, so that a try whose
    answer was lost and is made again leaves one AuditEvent. Returns the events sent."""
    sent = 0
    for row in await asyncio.to_thread(audit.claim_due, BATCH):
        try:
            resource = audit_event(access_of(row), server)
            await client.request(
                "PUT",
                f"AuditEvent/{row.uuid}",
                json=resource,
                kind="audit",
                retry=RetryPolicy(attempts=1),
            )
        except Exception as exc:  # recorded with the row, tried again later
            kind = error_kind(exc)
            log.warning("an AuditEvent could not be sent (%s); it will be tried again", kind)
            await asyncio.to_thread(audit.mark_failed, row.id, kind)
            continue
        await asyncio.to_thread(audit.mark_sent, row.id)
        sent += 1
    return sent
