"""FHIR logical ids and the relative paths prescreen builds from them.

An id that enters a URL must be a FHIR id (R4 ``id`` datatype: ``[A-Za-z0-9\\-\\.]{1,64}``):
anything else (``../``, ``?``, ``#``) could make prescreen send its own credentials to another
path of the FHIR server.
"""

from __future__ import annotations

import re

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
# A path relative to the FHIR base: segments of id characters or an operation ($export),
# never '.' or '..' alone.
_SEGMENT = re.compile(r"\$?[A-Za-z0-9\-._]{1,64}")


def is_fhir_id(value: object) -> bool:
    """A FHIR id; ids made only of dots (``..``) are refused too, although the R4 pattern
    allows them, because in a URL path they mean "the folder above"."""
    return (
        isinstance(value, str) and FHIR_ID.fullmatch(value) is not None and value.strip(".") != ""
    )


def is_resource_type(value: object) -> bool:
    return isinstance(value, str) and RESOURCE_TYPE.fullmatch(value) is not None


def is_reference(value: object) -> bool:
    """``Type/id`` with a valid type and id."""
    if not isinstance(value, str) or value.count("/") != 1:
        return False
    resource_type, resource_id = value.split("/")
    return is_resource_type(resource_type) and is_fhir_id(resource_id)


def is_safe_relative_path(path: str) -> bool:
    """A path below the FHIR base made only of id-like segments (no query, fragment or '..')."""
    segments = path.split("/")
    return all(
        _SEGMENT.fullmatch(segment) is not None and segment not in (".", "..")
        for segment in segments
    )
