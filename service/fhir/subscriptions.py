"""R4 rest-hook Subscriptions that tell the service when a patient's data changes.

The criteria come from the mappings of every trial served: one Subscription per distinct search
the screening makes (code lists split as for searches), plus one for Patient changes. Each id is
derived from its criteria, so installing again updates them in place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from service.fhir.client import FhirClient, Json
from service.fhir.retrieval import chunked, search_plan
from service.ruleset.loader import RuleSet


def subscription_resources(
    rulesets: Sequence[RuleSet], endpoint: str, headers: list[str], codes_per_request: int
) -> list[Json]:
    """One Subscription per distinct search of all the trials' mappings (their union: a search
    two trials share is subscribed once), plus one for Patient changes."""
    criteria = ["Patient?_lastUpdated=gt2000-01-01"]  # every Patient change (deceased, birthDate)
    for ruleset in rulesets:
        for spec in search_plan(ruleset.mapper):
            others = [(p, ",".join(t)) for p, t in spec.filters if p != "code"]
            codes = dict(spec.filters).get("code")
            for chunk in chunked(codes or [], codes_per_request) if codes else [[]]:
                params = [*others, *([("code", ",".join(chunk))] if chunk else [])]
                criteria.append(f"{spec.resource_type}?{urlencode(params, safe='|,:/')}")
    trials = ", ".join(ruleset.trial.acronym for ruleset in rulesets)
    resources = []
    for text in dict.fromkeys(criteria):
        resource: dict[str, Any] = {
            "resourceType": "Subscription",
            # Named by its criteria: installing again updates it in place.
            "id": "prescreen-" + hashlib.sha256(text.encode()).hexdigest()[:16],
            "status": "requested",
            "reason": f"prescreen re-screening for {trials}",
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
