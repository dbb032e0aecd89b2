"""Access to patient data as FHIR R4 AuditEvents, after IHE Basic Audit Log Patterns (BALP).

One AuditEvent per access recorded in the access audit (``service/state/audit.py``):

- a patient page viewed: BALP's *Read* pattern (RESTful ``read`` of the patient's data,
  action ``R``) with the patient as the entity (type Person, role Patient);
- a decision recorded: the *Update* pattern (``update``, action ``U``) on the patient's
  ResearchSubject for the trial, the patient as an entity;
- a list exported: the *Query* pattern (``search``, action ``E``), the filters as the query
  entity (base64 of the query string, type System Object, role Query).

Agents, as the patterns have them: the person (information recipient, ``requestor``), the client
(DICOM "Source Role ID", with its network address) and prescreen (DICOM "Destination Role ID");
the source is prescreen (an application server). ``meta.profile`` does not name the BALP
profiles: a server that checks claimed profiles and lacks that guide would refuse every event.
Each event is validated with the fhir.resources R4B model before it leaves.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
INTERACTION = "http://hl7.org/fhir/restful-interaction"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
# Who a person is, when the audit has only the name they signed in with (or an API client's).
USER_SYSTEM = "urn:prescreen:user"
TRIAL_DETAIL = "trial"
STATUS_DETAIL = "status"

# action → (RESTful interaction, its display, AuditEvent.action)
_PATTERNS = {
    "view": ("read", "read", "R"),
    "decision": ("update", "update", "U"),
    "export": ("search", "search", "E"),
}


@dataclass(frozen=True)
class Access:
    """What the audit recorded, as the builder needs it."""

    id: str  # the event's id on the server (a UUID: sent again, it replaces itself)
    action: str  # view | decision | export
    user: str
    via: str  # ui | api
    at: datetime  # naive UTC, as the database holds it
    client_address: str = ""
    patient_id: str = ""
    trial: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def _network(address: str) -> dict[str, str] | None:
    """An IP address is type 2, a machine name type 1 (FHIR's network-type codes)."""
    if not address:
        return None
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return {"address": address, "type": "1"}
    return {"address": address, "type": "2"}


def _instant(at: datetime) -> str:
    stamp = at if at.tzinfo else at.replace(tzinfo=UTC)
    return stamp.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _agents(access: Access, server: str) -> list[dict[str, Any]]:
    person: dict[str, Any] = {
        "type": {"coding": [_coding(PARTICIPATION, "IRCP", "information recipient")]},
        "who": {
            "identifier": {"system": USER_SYSTEM, "value": access.user},
            "display": access.user,
        },
        "requestor": True,
    }
    client: dict[str, Any] = {
        "type": {"coding": [_coding(DICOM, "110153", "Source Role ID")]},
        "who": {"display": "web browser" if access.via == "ui" else "API client"},
        "requestor": False,
    }
    network = _network(access.client_address)
    if network:
        client["network"] = network
    prescreen: dict[str, Any] = {
        "type": {"coding": [_coding(DICOM, "110152", "Destination Role ID")]},
        "who": {"display": "prescreen"},
        "requestor": False,
    }
    if server:
        prescreen["network"] = {"address": server, "type": "5"}  # a URI
    return [person, client, prescreen]


def _entities(access: Access) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    details = []
    if access.trial:
        details.append({"type": TRIAL_DETAIL, "valueString": access.trial})
    if access.action == "decision" and access.detail.get("status"):
        details.append({"type": STATUS_DETAIL, "valueString": str(access.detail["status"])})
    if access.action == "export":
        filters = {k: str(v) for k, v in sorted(access.detail.get("filters", {}).items()) if v}
        query = urlencode(filters, doseq=False)
        entities.append(
            {
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "24", "Query"),
                "description": "screening log (CSV)",
                "query": base64.b64encode(query.encode()).decode(),
            }
        )
    if access.patient_id:
        patient: dict[str, Any] = {
            "what": {"reference": f"Patient/{access.patient_id}"},
            "type": _coding(ENTITY_TYPE, "1", "Person"),
            "role": _coding(OBJECT_ROLE, "1", "Patient"),
        }
        if details:
            patient["detail"] = details
        entities.append(patient)
    return entities


def audit_event(access: Access, server: str = "") -> dict[str, Any]:
    """The AuditEvent of one access; ``server``: prescreen's public URL (its network address)."""
    from fhir.resources.R4B.auditevent import AuditEvent

    interaction, display, action = _PATTERNS[access.action]
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": access.id,
        "type": _coding(EVENT_TYPE, "rest", "RESTful Operation"),
        "subtype": [_coding(INTERACTION, interaction, display)],
        "action": action,
        "recorded": _instant(access.at),
        "outcome": "0",
        "agent": _agents(access, server),
        "source": {
            "observer": {"display": "prescreen"},
            "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
        },
    }
    entities = _entities(access)
    if entities:
        resource["entity"] = entities
    AuditEvent.model_validate(resource)
    return resource
