"""A coordinator's decision on a candidate: the one code path the API and the web worklist share.

The decision is written to the patient's ResearchSubject on the FHIR server with ``If-Match``, so
two people deciding at once cannot overwrite each other: the caller may pass the version it showed
the person (``expected_version``); if the subject has changed since, nothing is written and the
other decision is returned in a :class:`DecisionConflictError`. Each decision written is kept in
the decision history (who, when, the status, the reason and a note), which the web worklist shows.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.api.engine import ScreeningService
from service.errors import FhirServerError
from service.fhir.writeback import WRITTEN_STATUS_URL
from service.research import subject_identifier_value
from service.state.models import DecisionRecord
from service.state.worklist import WorklistStore

# ResearchSubject.status codes (R4 research-subject-status) a person may set.
DECISIONS = (
    "eligible",
    "ineligible",
    "not-registered",
    "screening",
    "pending-on-study",
    "on-study",
    "withdrawn",
    "candidate",
    "potential-candidate",
)

# Reasons for "ineligible" that no rule set states (the others name a criterion). Declined and
# could-not-be-reached stay reasons of "ineligible", and the screening log counts them apart
# from screen failures.
DECLINED = "Declined to take part"
NOT_REACHED = "Could not be reached"
GENERAL_REASONS = (DECLINED, NOT_REACHED, "Clinician judgement", "Other (see note)")


class DecisionError(Exception):
    """The decision could not be recorded; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class DecisionConflictError(DecisionError):
    """Someone else changed the ResearchSubject first: their status is returned, not overwritten."""

    def __init__(
        self,
        current_status: str,
        current_version: str | None,
        *,
        last_decision: DecisionRecord | None = None,
    ) -> None:
        super().__init__(409, "the ResearchSubject was changed by someone else first")
        self.current_status = current_status
        self.current_version = current_version
        # The decision prescreen recorded last for this candidate (who and when), if any: the
        # other person's, unless the change was made outside prescreen.
        self.last_decision = last_decision


@dataclass(frozen=True)
class DecisionOutcome:
    candidate_id: int
    status: str
    version: str | None


async def find_subject(service: ScreeningService, trial: str, patient_id: str) -> dict[str, Any]:
    """The ResearchSubject prescreen wrote for this patient and trial (found by its key tag)."""
    ruleset = service.rulesets.get(trial)
    if ruleset is None:
        raise DecisionError(404, "the candidate's trial is not served here")
    client = await service.client()
    key = subject_identifier_value(ruleset, patient_id)
    # Every subject prescreen writes carries its key as a tag (_tag works on every server).
    found = [
        r
        async for r in client.search("ResearchSubject", [("_tag", f"urn:prescreen:key|{key}")])
        if r.get("resourceType") == "ResearchSubject"
    ]
    if not found:
        raise DecisionError(409, "no ResearchSubject on the FHIR server for this candidate")
    return dict(found[0])


async def record_decision(
    service: ScreeningService,
    candidate_id: int,
    status: str,
    *,
    expected_version: str | None = None,
    decided_by: str = "",
    reason: str = "",
    note: str = "",
    expected_status: str | None = None,
    unchanged_since: datetime | None = None,
) -> DecisionOutcome:
    """Write ``status`` to the candidate's ResearchSubject; refuse if it changed meanwhile.

    A caller that showed a status rather than a version (the worklist's bulk change) passes it
    as ``expected_status``, and when it showed it as ``unchanged_since``: the subject's status
    must still be that one, and no decision recorded here since (someone deciding and deciding
    back is a change too).

    ``decided_by`` (the signed-in person or the API client), ``reason`` and ``note`` go to the
    decision history only: the ResearchSubject carries the status, not free text.
    """
    if status not in DECISIONS:
        raise DecisionError(422, f"unknown decision '{status}'")
    row = await asyncio.to_thread(service.store.candidate, candidate_id)
    if row is None:
        raise DecisionError(404, "no such candidate")
    history = WorklistStore(service.store.engine)
    subject = await find_subject(service, row.trial, row.patient_id)
    version = subject.get("meta", {}).get("versionId")
    previous = str(subject.get("status", ""))
    stale = expected_version is not None and version is not None and expected_version != version
    if expected_status is not None and previous != expected_status:
        stale = True
    last = None
    if unchanged_since is not None and not stale:
        last = await asyncio.to_thread(history.last_decision, candidate_id)
        stale = last is not None and last.decided_at > unchanged_since
    if stale:
        last = last or await asyncio.to_thread(history.last_decision, candidate_id)
        raise DecisionConflictError(previous, version, last_decision=last)
    subject["status"] = status
    # A person decided: prescreen's own status marker no longer matches, so it will not undo it.
    subject["extension"] = [
        e for e in subject.get("extension", []) if e.get("url") != WRITTEN_STATUS_URL
    ]
    headers = {"If-Match": f'W/"{version}"'} if version else {}
    client = await service.client()
    try:
        response, body = await client.request(
            "PUT",
            f"ResearchSubject/{subject['id']}",
            json=subject,
            headers=headers,
            ok_statuses=frozenset({409, 412}),
        )
    except FhirServerError as exc:
        message = f"the FHIR server refused the decision (HTTP {exc.status})"
        raise DecisionError(502, message) from exc
    if response.status_code in (409, 412):
        # Someone wrote between our read and our write: show theirs.
        current = await find_subject(service, row.trial, row.patient_id)
        last = await asyncio.to_thread(history.last_decision, candidate_id)
        raise DecisionConflictError(
            str(current.get("status", "")),
            current.get("meta", {}).get("versionId"),
            last_decision=last,
        )
    new_version = (body or {}).get("meta", {}).get("versionId") if isinstance(body, dict) else None
    await asyncio.to_thread(service.store.set_candidate_status, candidate_id, status)
    await asyncio.to_thread(
        history.record_decision,
        row,
        status,
        previous,
        decided_by,
        reason,
        note,
        new_version,
    )
    return DecisionOutcome(candidate_id, status, new_version)
