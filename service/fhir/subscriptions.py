"""R4 rest-hook Subscriptions that tell the service when a patient's data changes.

The criteria come from the mapping: one Subscription per search the screening makes (code
lists split as for searches), plus one for Patient changes. Each has a fixed id, so installing
again updates them in place.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from service.fhir.client import FhirClient, Json
from service.fhir.retrieval import chunked, search_plan
from service.ruleset.loader import RuleSet


def subscription_resources(
    ruleset: RuleSet, endpoint: str, headers: list[str], codes_per_request: int
) -> list[Json]:
    criteria = ["Patient?_lastUpdated=gt2000-01-01"]  # every Patient change (deceased, birthDate)
    for spec in search_plan(ruleset.mapper):
        others = [(p, ",".join(t)) for p, t in spec.filters if p != "code"]
        codes = dict(spec.filters).get("code")
        for chunk in chunked(codes or [], codes_per_request) if codes else [[]]:
            params = [*others, *([("code", ",".join(chunk))] if chunk else [])]
            criteria.append(f"{spec.resource_type}?{urlencode(params, safe='|,:/')}")
    resources = []
    for index, text in enumerate(criteria):
        resource: dict[str, Any] = {
            "resourceType": "Subscription",
            "id": f"prescreen-{ruleset.id}-{index}",
            "status": "requested",
            "reason": f"prescreen re-screening for {ruleset.trial.acronym}",
            "criteria": text,
            "channel": {
                "type": "rest-hook",
                "endpoint": endpoint,
                "payload": "application/fhir+json",
                "header": headers,
            },
        }
        resources.append(resource)
    return resources


async def install(client: FhirClient, resources: list[Json]) -> int:
    for resource in resources:
        await client.request("PUT", f"Subscription/{resource['id']}", json=resource, kind="install")
    return len(resources)
