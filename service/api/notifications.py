"""Reading a rest-hook Subscription notification: what changed, as resources or references.

R4 servers send many shapes: an empty body (a ping), the changed resource itself, an id-only
stub, or a Bundle of entries (resources or just ``fullUrl``s). Everything here comes from outside,
so each shape is checked before any id is used to fetch from the FHIR server: a malformed
notification is a 400 with a message saying what is wrong, never a 500, and an id that is not a
FHIR id never reaches a URL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.fhir.ids import is_fhir_id, is_reference, is_resource_type

# Bundle entries that describe the notification itself rather than a changed resource.
_ABOUT_THE_NOTIFICATION = ("Parameters", "SubscriptionStatus")


class BadNotificationError(ValueError):
    """The notification cannot be read; the message says why (never quoting its content)."""


@dataclass
class Notified:
    resources: list[dict[str, Any]] = field(default_factory=list)
    references: list[str] = field(default_factory=list)


def path_reference(resource_type: str, resource_id: str) -> str:
    """``Type/id`` from a notification URL path ([endpoint]/[type]/[id])."""
    if not is_resource_type(resource_type) or not is_fhir_id(resource_id):
        raise BadNotificationError("the path does not name a FHIR resource type and id")
    return f"{resource_type}/{resource_id}"


def read_notification(payload: Any, reference_in_path: str | None) -> Notified:
    """What a parsed JSON notification body says changed."""
    notified = Notified(references=[reference_in_path] if reference_in_path else [])
    if not isinstance(payload, dict):
        raise BadNotificationError("a notification body is a FHIR resource (a JSON object)")
    resource_type = payload.get("resourceType")
    if not is_resource_type(resource_type):
        raise BadNotificationError("the notification's resourceType is not a resource type name")
    if resource_type == "Bundle":
        entries = payload.get("entry", [])
        if not isinstance(entries, list):
            raise BadNotificationError("Bundle.entry is not a list")
        for number, entry in enumerate(entries, start=1):
            _read_entry(entry, number, notified)
        return notified
    _check_id(payload.get("id"), "the resource")
    if len(payload) <= 3 and "id" in payload and reference_in_path is None:
        notified.references.append(f"{resource_type}/{payload['id']}")  # id-only
    else:
        notified.resources.append(payload)
    return notified


def _read_entry(entry: Any, number: int, notified: Notified) -> None:
    if not isinstance(entry, dict):
        raise BadNotificationError(f"Bundle entry {number} is not an object")
    resource = entry.get("resource")
    if resource is not None:
        if not isinstance(resource, dict) or not is_resource_type(resource.get("resourceType")):
            raise BadNotificationError(f"Bundle entry {number} has no readable resource")
        if resource["resourceType"] not in _ABOUT_THE_NOTIFICATION:
            _check_id(resource.get("id"), f"Bundle entry {number}")
            notified.resources.append(resource)
        return
    full_url = entry.get("fullUrl")
    if full_url is None:
        return
    if not isinstance(full_url, str):
        raise BadNotificationError(f"Bundle entry {number} has a fullUrl that is not text")
    if full_url.startswith("urn:"):
        return  # a placeholder without the resource: nothing to fetch
    reference = "/".join(full_url.split("?")[0].split("#")[0].rstrip("/").split("/")[-2:])
    if not is_reference(reference):
        raise BadNotificationError(f"Bundle entry {number} fullUrl does not end in Type/id")
    notified.references.append(reference)


def _check_id(value: Any, what: str) -> None:
    if value is not None and not is_fhir_id(value):
        raise BadNotificationError(f"{what} has an id that is not a FHIR id")
