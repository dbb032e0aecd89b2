"""The access audit's AuditEvents (IHE Basic Audit Log Patterns: Read, Update, Query) pass the
HAPI FHIR instance validator with no error."""

from __future__ import annotations

from datetime import datetime

from service.fhir.auditevent import Access, audit_event
from tests.conformance.validator import InstanceValidator, errors_of


def events() -> list[dict[str, object]]:
    at = datetime(2026, 6, 15, 9, 41, 7)
    return [
        audit_event(
            Access(
                "0b6e4f7c-1d2a-4b3c-9d8e-7f6a5b4c3d2e",
                "view",
                "carol",
                "ui",
                at,
                "192.0.2.10",
                "p-1",
                "relieve",
            ),
            "https://prescreen.hospital.example",
        ),
        audit_event(
            Access(
                "1b6e4f7c-1d2a-4b3c-9d8e-7f6a5b4c3d2e",
                "decision",
                "engine",
                "api",
                at,
                "2001:db8::7",
                "p-1",
                "ssrs",
                {"status": "ineligible"},
            )
        ),
        audit_event(
            Access(
                "2b6e4f7c-1d2a-4b3c-9d8e-7f6a5b4c3d2e",
                "export",
                "dora",
                "ui",
                at,
                "ward-pc-7",
                detail={"filters": {"trial": "relieve", "status": "open"}, "rows": 12},
            ),
            "https://prescreen.hospital.example",
        ),
    ]


def test_the_audit_events_are_valid(fhir_validator: InstanceValidator) -> None:
    checked = fhir_validator.validate(events(), "audit-events")
    assert [c.resource_type for c in checked] == ["AuditEvent"] * 3
    assert errors_of(checked) == ""


def test_a_broken_audit_event_is_caught(fhir_validator: InstanceValidator) -> None:
    """The check can fail: an action outside its value set is an error."""
    broken = events()[0] | {"action": "X"}
    (checked,) = fhir_validator.validate([broken], "audit-event-broken")
    assert "action" in errors_of([checked])
