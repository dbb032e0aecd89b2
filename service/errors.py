"""Exceptions shared across the package, and the *kind* of an error: what the service stores,
returns and logs instead of a message (messages from a FHIR server or a database can quote
patient ids and names; a kind never does)."""

from __future__ import annotations


class PrescreenError(Exception):
    """Base class: an error the CLI reports as one clear line instead of a traceback."""


class ConfigError(PrescreenError):
    """A rule set, mapping or value set that cannot be used. The message names the file."""


class RuleSetError(ConfigError):
    """One or more problems in a rule set; each names the file, the criterion and the problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class SourceError(PrescreenError):
    """An input source that cannot be read at all (missing folder, no NDJSON files)."""


class FhirServerError(PrescreenError):
    """A FHIR server answered with an error; carries the status and the server's diagnostics.

    The diagnostics (an OperationOutcome's text) stay out of the message: servers quote the
    request in them ("Patient/123 (Jane Doe) not found"), and messages end up in logs and
    tracebacks. Code that shows them to an operator reads ``diagnostics`` explicitly.
    """

    def __init__(self, message: str, status: int | None = None, diagnostics: str = "") -> None:
        self.status = status
        self.diagnostics = diagnostics
        super().__init__(message)


class CrossPatientSearchRefusedError(FhirServerError):
    """The server refused a search across patients (a clinical type searched without a patient):
    it allows patient-scoped queries only. Nothing can be selected that way; the run needs a list
    of patients (ids, a Group, a clinic's appointments)."""

    OPTIONS = (
        "--patients/--patients-file (ids), --group ID (the members of a Group) or "
        "--appointments DATE[..DATE] (a clinic's schedule)"
    )

    def __init__(
        self,
        resource_type: str,
        how: str,
        purpose: str = "cohort discovery",
        status: int | None = None,
    ) -> None:
        self.resource_type = resource_type
        self.how = how
        self.purpose = purpose
        super().__init__(self._text(), status=status)

    def _text(self) -> str:
        return (
            f"the FHIR server refused a search across patients ({self.resource_type} without a "
            f"patient parameter: {self.how}); it allows patient-scoped queries only, so "
            f"{self.purpose} cannot run there. Give the patients to screen instead: "
            f"{self.OPTIONS}. See docs/servers.md."
        )

    def for_purpose(self, purpose: str) -> CrossPatientSearchRefusedError:
        return CrossPatientSearchRefusedError(self.resource_type, self.how, purpose, self.status)


class FhirUnavailableError(FhirServerError):
    """The server could not be reached, or kept failing, after every retry."""


def error_kind(exc: BaseException) -> str:
    """A short, fixed name for what went wrong, safe to store, return and log: never the message.

    fhir-unavailable, fhir-http-<status>, fhir-error (a FHIR answer prescreen cannot use),
    database-error, http-error (another HTTP peer: a webhook), source-unreadable, config-error,
    io-error, internal-error.
    """
    if isinstance(exc, FhirUnavailableError):
        return "fhir-unavailable"
    if isinstance(exc, FhirServerError):
        return f"fhir-http-{exc.status}" if exc.status is not None else "fhir-error"
    if isinstance(exc, SourceError):
        return "source-unreadable"
    if isinstance(exc, ConfigError):
        return "config-error"
    roots = _modules_of(exc)
    if roots & {"sqlalchemy", "sqlite3", "psycopg", "psycopg2"}:
        return "database-error"
    if "httpx" in roots:
        return "http-error"
    if isinstance(exc, OSError):
        return "io-error"
    return "internal-error"


def _modules_of(exc: BaseException) -> set[str]:
    # By module rather than by class: this module is imported by every command, most of which
    # never load SQLAlchemy, a database driver or httpx.
    return {cls.__module__.split(".", 1)[0] for cls in type(exc).__mro__}
