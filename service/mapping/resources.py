"""Reading a resource's identity: its patient, its version, and the references it makes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from service.fhirdates import FhirDateError, parse_datetime
from service.mapping.paths import Path as FhirPath

# Looks up a reference ("Medication/1") in the source being read.
Resolver = Callable[[str], dict[str, Any] | None]


class UnattributableResourceError(ValueError):
    """A resource that cannot be attributed or referenced (no id, no patient subject)."""


CodingChange = tuple[dict[str, Any], str, str]


def restore_codings(changes: list[CodingChange]) -> None:
    for coding, system, code in changes:
        coding["system"], coding["code"] = system, code


def version_of(resource: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``meta.versionId`` as text and ``meta.lastUpdated`` as a UTC instant, when usable."""
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        return None, None
    version = meta.get("versionId")
    if isinstance(version, bool) or not isinstance(version, str | int):
        version = None
    updated = meta.get("lastUpdated")
    instant = None
    if isinstance(updated, str):
        try:
            instant = parse_datetime(updated).instant
        except FhirDateError:
            instant = None
    return (str(version).strip() if version is not None else None), instant


def local_reference(reference: str, target: str) -> str | None:
    """``Type/id`` from a relative, absolute or versioned reference to ``target``."""
    parts = reference.strip().split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == target and parts[-1]:
        return f"{target}/{parts[-1]}"
    return None


def lookup_reference(
    resource: dict[str, Any], reference: dict[str, Any], target: str, resolve: Resolver | None
) -> dict[str, Any] | None:
    """The ``target`` resource a Reference names: contained (``#id``), else from ``resolve``."""
    text = reference.get("reference")
    if not isinstance(text, str):
        return None
    if text.startswith("#"):
        contained = resource.get("contained")
        for item in contained if isinstance(contained, list) else []:
            if (
                isinstance(item, dict)
                and item.get("resourceType") == target
                and item.get("id") == text[1:]
            ):
                return item
        return None
    local = local_reference(text, target)
    return resolve(local) if resolve is not None and local is not None else None


def patient_of_path(resource: Mapping[str, Any], patient_path: FhirPath | None, own_id: str) -> str:
    """The patient id the path's Reference names (a Patient's own id when there is no path)."""
    if patient_path is None:
        return own_id
    reference = patient_path.first(resource)
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        raise UnattributableResourceError("resource has no subject/patient reference")
    return patient_id_from_reference(reference["reference"])


def patient_of(resource: Mapping[str, Any]) -> str | None:
    """The patient a resource belongs to (its own id for a Patient), from subject or patient."""
    if resource.get("resourceType") == "Patient":
        return str(resource["id"]) if resource.get("id") else None
    for key in ("subject", "patient"):
        value = resource.get(key)
        if isinstance(value, dict) and isinstance(value.get("reference"), str):
            try:
                return patient_id_from_reference(value["reference"])
            except UnattributableResourceError:
                return None
    return None


def patient_id_from_reference(reference: str) -> str:
    """The id in ``Patient/1``, ``https://host/fhir/Patient/1`` or ``Patient/1/_history/2``."""
    parts = reference.split("/")
    for index in range(len(parts) - 1):
        if parts[index] == "Patient" and parts[index + 1]:
            return parts[index + 1]
    raise UnattributableResourceError("subject does not reference a Patient")
