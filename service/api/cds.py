"""CDS Hooks: discovery and a patient-view service with one card per trial.

The prefetch templates come from the mapping (the same searches a live run makes), so an EHR
that honours them spares a round trip; without them the service fetches from ``fhirServer``
with the ``fhirAuthorization`` token the EHR passed. Every call carries a JWT the EHR signed,
verified against the JWKS of a trusted issuer (aud = this service's URL, exp, jti).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel

from service.api.engine import ScreeningService
from service.api.security import Authenticator
from service.fhir.auth import BearerAuth
from service.fhir.client import FhirClient, Json
from service.fhir.connect import read_capabilities
from service.fhir.retrieval import PatientFetcher, search_plan, search_requests

router = APIRouter()
SERVICE_ID = "prescreen-patient-view"


def prefetch_templates(service: ScreeningService) -> dict[str, str]:
    templates = {"patient": "Patient/{{context.patientId}}"}
    for ruleset in service.rulesets.values():
        for spec in search_plan(ruleset.mapper):
            for index, params in enumerate(
                search_requests(spec, ["{{context.patientId}}"], 10_000, 500)
            ):
                query = urlencode(params, safe="{}/|,:")
                key = f"{ruleset.id}-{spec.resource_type}-{index}"
                templates[key] = f"{spec.resource_type}?{query}"
    return templates


@router.get("/cds-services", summary="CDS Hooks discovery")
async def discovery(request: Request) -> dict[str, Any]:
    service: ScreeningService = request.app.state.service
    trials = ", ".join(r.trial.acronym for r in service.rulesets.values())
    return {
        "services": [
            {
                "hook": "patient-view",
                "id": SERVICE_ID,
                "title": "Clinical trial pre-screening",
                "description": f"Flags patients who may qualify for: {trials}.",
                "prefetch": prefetch_templates(service),
            }
        ]
    }


class HookRequest(BaseModel):
    hook: str
    hookInstance: str  # noqa: N815 - the CDS Hooks field name
    context: dict[str, Any]
    fhirServer: str | None = None  # noqa: N815
    fhirAuthorization: dict[str, Any] | None = None  # noqa: N815
    prefetch: dict[str, Any] | None = None


def _resources(value: Any) -> list[Json]:
    if not isinstance(value, dict):
        return []
    if value.get("resourceType") == "Bundle":
        return [
            e["resource"] for e in value.get("entry", []) if isinstance(e.get("resource"), dict)
        ]
    return [value]


def _card(contract: dict[str, Any], trial: Any) -> dict[str, Any]:
    met = [cid for cid, c in contract["criteria"].items() if c["result"] == "met"]
    unknown = [
        f"- **{cid}**: {c['reason']}"
        for cid, c in contract["criteria"].items()
        if c["result"] == "unknown"
    ]
    verdict = contract["verdict"].replace("-", " ")
    return {
        "uuid": f"{trial.nct_id}-{contract['patient']}",
        "summary": f"{trial.acronym} ({trial.nct_id}): {verdict}"[:140],
        "indicator": "info",
        "detail": (
            f"Met: {', '.join(met) or 'none'}.\n\nTo check:\n" + "\n".join(unknown)
            if unknown
            else f"Met: {', '.join(met)}."
        ),
        "source": {
            "label": "prescreen",
            "topic": {"code": trial.nct_id, "display": trial.title[:80]},
        },
    }


@router.post(f"/cds-services/{SERVICE_ID}", summary="patient-view: one card per trial")
async def patient_view(body: HookRequest, request: Request) -> dict[str, Any]:
    service: ScreeningService = request.app.state.service
    auth: Authenticator = request.app.state.auth
    audience = (service.settings.public_url or str(request.base_url)).rstrip("/")
    auth.verify_cds_jwt(request, f"{audience}/cds-services/{SERVICE_ID}")
    if body.hook != "patient-view":
        raise HTTPException(400, "this service answers patient-view")
    patient_id = str(body.context.get("patientId", ""))
    if not patient_id:
        raise HTTPException(400, "context.patientId is required")
    today = datetime.now(UTC).date()
    cards = []
    templates = prefetch_templates(service)
    for trial_id, ruleset in service.rulesets.items():
        prefetch = body.prefetch or {}
        keys = ["patient"] + [k for k in templates if k.startswith(f"{trial_id}-")]
        if all(k in prefetch and prefetch[k] is not None for k in keys):
            resources = [r for k in keys for r in _resources(prefetch[k])]
        else:
            resources = await _fetch(body, ruleset, patient_id)
        for contract in service.evaluate(trial_id, resources, today):
            if (
                contract["patient"] == f"Patient/{patient_id}"
                and contract["verdict"] != "ineligible"
            ):
                cards.append(_card(contract, ruleset.trial))
    return {"cards": cards}


async def _fetch(body: HookRequest, ruleset: Any, patient_id: str) -> list[Json]:
    if not body.fhirServer:
        raise HTTPException(412, "no prefetch and no fhirServer to fetch from")
    token = (body.fhirAuthorization or {}).get("access_token")
    auth = BearerAuth(str(token)) if token else None
    async with FhirClient(body.fhirServer, auth=auth, retry=None) as client:
        abilities = read_capabilities(await client.capabilities())
        fetcher = PatientFetcher(
            client, ruleset.mapper, abilities, codes_per_request=100, page_size=500
        )
        return await fetcher.fetch([patient_id])
