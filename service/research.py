"""The FHIR R4 ResearchStudy and ResearchSubject resources prescreen writes.

Ids and identifiers are deterministic (study + patient) so that writing the same result twice,
to files or to a server, yields the same resource and conditional creates can match it.
Every resource is validated with the fhir.resources R4B models before it leaves.
"""

from __future__ import annotations

import hashlib
from datetime import date
from typing import Any

from fhir.resources.R4B.researchstudy import ResearchStudy
from fhir.resources.R4B.researchsubject import ResearchSubject

from service.ruleset.loader import RuleSet
from service.ruleset.overrides import protocol_values, value_text

# Verdicts that become ResearchSubjects; ineligible patients get none (spec).
SUBJECT_STATUSES = frozenset({"candidate", "potential-candidate"})


def study_id(ruleset: RuleSet) -> str:
    return ruleset.trial.nct_id


def study_identifier(ruleset: RuleSet) -> dict[str, str]:
    return {"system": ruleset.trial.identifier_system, "value": ruleset.trial.nct_id}


def subject_identifier_value(ruleset: RuleSet, patient_id: str) -> str:
    return f"{ruleset.trial.nct_id}/Patient/{patient_id}"


def subject_id(ruleset: RuleSet, patient_id: str) -> str:
    """A FHIR id (at most 64 characters) that depends on the study and patient only."""
    digest = hashlib.sha256(subject_identifier_value(ruleset, patient_id).encode()).hexdigest()
    return f"ps-{digest[:40]}"


def research_study(ruleset: RuleSet) -> dict[str, Any]:
    trial = ruleset.trial
    resource: dict[str, Any] = {
        "resourceType": "ResearchStudy",
        "id": study_id(ruleset),
        "identifier": [study_identifier(ruleset)],
        "title": " ".join(trial.title.split()),
        "status": trial.status,
        "sponsor": {"display": trial.sponsor},
    }
    if trial.description:
        resource["description"] = " ".join(trial.description.split())
    if trial.conditions:
        resource["condition"] = [{"text": text} for text in trial.conditions]
    if trial.url:
        resource["relatedArtifact"] = [{"type": "documentation", "url": trial.url}]
    if ruleset.overrides:
        resource["note"] = [{"text": parameters_note(ruleset)}]
    return validated(ResearchStudy, resource)


def parameters_note(ruleset: RuleSet) -> str:
    """What a run with parameters set (``--set``) says of itself beside the study."""
    changes = ", ".join(
        f"{name} {value_text(value)} (rule file: {value_text(protocol)})"
        for (name, value), protocol in zip(
            ruleset.overrides,
            protocol_values(ruleset, (name for name, _ in ruleset.overrides)).values(),
            strict=True,
        )
    )
    return (
        f"Pre-screened with rule set {ruleset.id} {ruleset.run_version}: parameters set for "
        f"this run, not the protocol's: {changes}."
    )


def research_subject(
    ruleset: RuleSet, patient_id: str, status: str, as_of: date, identifier_system: str
) -> dict[str, Any]:
    """A ResearchSubject; ``status`` is the verdict (or ``ineligible`` when withdrawn)."""
    resource = {
        "resourceType": "ResearchSubject",
        "id": subject_id(ruleset, patient_id),
        "identifier": [
            {
                "system": identifier_system,
                "value": subject_identifier_value(ruleset, patient_id),
            }
        ],
        "status": status,
        "period": {"start": as_of.isoformat()},
        "study": {
            "reference": f"ResearchStudy/{study_id(ruleset)}",
            "identifier": study_identifier(ruleset),
            "display": ruleset.trial.acronym,
        },
        "individual": {"reference": f"Patient/{patient_id}"},
    }
    return validated(ResearchSubject, resource)


def validated(model: Any, resource: dict[str, Any]) -> dict[str, Any]:
    """Validate with the R4B model and return the model's own JSON form of the resource."""
    parsed = model.model_validate(resource)
    dumped: dict[str, Any] = parsed.model_dump(mode="json", exclude_none=True, by_alias=True)
    return dumped
