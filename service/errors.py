"""Exceptions shared across the package."""

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
    """A FHIR server answered with an error; carries the status and the server's diagnostics."""

    def __init__(self, message: str, status: int | None = None, diagnostics: str = "") -> None:
        self.status = status
        self.diagnostics = diagnostics
        detail = f" ({diagnostics})" if diagnostics else ""
        super().__init__(f"{message}{detail}")


class FhirUnavailableError(FhirServerError):
    """The server could not be reached, or kept failing, after every retry."""
