"""Error kinds: what the service stores, returns and logs instead of an error's message."""

from __future__ import annotations

import sqlite3

import httpx
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from service.errors import (
    ConfigError,
    FhirServerError,
    FhirUnavailableError,
    SourceError,
    error_kind,
)

PHI = "Patient/pt-7c1e5 (Jane Quinterro-Doe)"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (FhirUnavailableError(f"GET Patient failed: {PHI}"), "fhir-unavailable"),
        (FhirServerError("GET Patient/… failed", status=404, diagnostics=PHI), "fhir-http-404"),
        (FhirServerError("answer is not a Bundle"), "fhir-error"),
        (IntegrityError("INSERT …", {"patient_id": PHI}, Exception(PHI)), "database-error"),
        (OperationalError("SELECT …", {}, sqlite3.OperationalError(PHI)), "database-error"),
        (sqlite3.IntegrityError(PHI), "database-error"),
        (httpx.ConnectError(PHI), "http-error"),
        (SourceError(PHI), "source-unreadable"),
        (ConfigError(PHI), "config-error"),
        (FileNotFoundError(PHI), "io-error"),
        (KeyError(PHI), "internal-error"),
    ],
)
def test_every_error_has_a_kind_that_quotes_nothing(error: Exception, kind: str) -> None:
    assert error_kind(error) == kind
    assert "Jane" not in error_kind(error)


def test_a_fhir_errors_message_leaves_the_servers_diagnostics_out() -> None:
    error = FhirServerError("GET Patient/… failed with HTTP 404", status=404, diagnostics=PHI)
    assert str(error) == "GET Patient/… failed with HTTP 404"
    assert error.diagnostics == PHI  # still there for code that shows it on purpose
