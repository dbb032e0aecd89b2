"""Building a FhirClient from the settings, and checking the server can do what a run needs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from service.errors import ConfigError, FhirServerError
from service.fhir.auth import (
    SmartBackendAuth,
    basic_auth,
    bearer_auth,
    discover_smart,
    scope_reads,
)
from service.fhir.client import FhirClient, RetryPolicy
from service.settings import Settings

# What write-back needs besides reading, as SMART v2 permissions (c create, r read, u update,
# d delete, s search): the study (conditional create), its subjects (conditional create, read
# back on a conflict, If-Match update), criterion Observations (conditional update), one
# Provenance per transaction, and the CodeSystems prescreen publishes (conditional create).
WRITE_PERMISSIONS = {
    "ResearchStudy": "crs",
    "ResearchSubject": "crus",
    "Observation": "cus",
    "Provenance": "c",
    "CodeSystem": "crs",
}
# A dry run of write-back reads what a write would change, and writes nothing.
DRY_RUN_PERMISSIONS = {"ResearchStudy": "rs", "ResearchSubject": "rs", "CodeSystem": "rs"}


def default_scope(
    read_types: Iterable[str], v2: bool = True, writes: Mapping[str, str] | None = None
) -> str:
    """SMART scopes for what a run does: reading these resource types (and Patient), and the
    permissions ``writes`` gives per type (v2 letters ``cruds``) for the types it writes. In
    v2 syntax (``system/Patient.rs``) or, for a server without permission-v2, v1 (``.read``,
    ``.write``). A read-only run asks for no write scope: a server may refuse a token asked
    for more than it grants."""
    permissions: dict[str, set[str]] = {rtype: set("rs") for rtype in {"Patient", *read_types}}
    for rtype, written in (writes or {}).items():
        permissions.setdefault(rtype, set()).update(written)
    scopes = []
    for rtype in sorted(permissions):
        granted = permissions[rtype]
        if v2:
            scopes.append(f"system/{rtype}.{''.join(c for c in 'cruds' if c in granted)}")
            continue
        if granted & set("rs"):
            scopes.append(f"system/{rtype}.read")
        if granted & set("cud"):
            scopes.append(f"system/{rtype}.write")
    return " ".join(scopes)


async def connect(
    settings: Settings,
    base_url: str | None = None,
    read_types: Iterable[str] = (),
    writes: Mapping[str, str] | None = None,
) -> FhirClient:
    """A client for the server; what the run reads (``read_types``, the mappings') and writes
    (``writes``: v2 permissions per type) set the default SMART scopes."""
    url = base_url or settings.fhir_url
    if not url:
        raise ConfigError("no FHIR server: give --fhir-url or set PRESCREEN_FHIR_URL")
    auth: Any = None
    if settings.fhir_auth == "bearer":
        token = settings.fhir_token.get_secret_value() if settings.fhir_token else None
        auth = bearer_auth(token)
    elif settings.fhir_auth == "basic":
        password = settings.fhir_password.get_secret_value() if settings.fhir_password else None
        auth = basic_auth(settings.fhir_username, password)
    elif settings.fhir_auth == "smart":
        if not (settings.smart_client_id and settings.smart_private_key and settings.smart_kid):
            raise ConfigError(
                "SMART auth needs PRESCREEN_SMART_CLIENT_ID, PRESCREEN_SMART_PRIVATE_KEY "
                "and PRESCREEN_SMART_KID"
            )
        try:
            key = settings.smart_private_key.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the SMART private key: {exc.strerror}") from exc
        smart = await discover_smart(url)
        token_url = settings.smart_token_url or smart.token_endpoint
        if token_url is None:
            raise ConfigError(
                "SMART auth: the server's .well-known/smart-configuration names no token "
                "endpoint; set PRESCREEN_SMART_TOKEN_URL"
            )
        auth = SmartBackendAuth(
            client_id=settings.smart_client_id,
            private_key_pem=key,
            kid=settings.smart_kid,
            token_url=token_url,
            algorithm=settings.smart_algorithm,
            scope=settings.smart_scope
            or default_scope(read_types, v2=smart.scopes_v2, writes=writes),
        )
    return FhirClient(
        url,
        auth=auth,
        timeout=settings.fhir_timeout,
        concurrency=settings.fhir_concurrency,
        retry=RetryPolicy(attempts=settings.fhir_retries),
    )


@dataclass
class ServerAbilities:
    """What the CapabilityStatement promises, reduced to what prescreen uses."""

    fhir_version: str
    batch: bool
    transaction: bool
    interactions: dict[str, set[str]] = field(default_factory=dict)
    search_params: dict[str, set[str]] = field(default_factory=dict)

    def can(self, resource_type: str, interaction: str) -> bool:
        return interaction in self.interactions.get(resource_type, set())

    def searchable(self, resource_type: str, param: str) -> bool:
        # _id and _lastUpdated apply to every resource; servers often leave them out.
        return param in {"_id"} or param in self.search_params.get(resource_type, set())


def read_capabilities(statement: dict[str, Any]) -> ServerAbilities:
    rest = next((r for r in statement.get("rest", []) if r.get("mode") == "server"), None)
    if rest is None:
        rest = (statement.get("rest") or [{}])[0]
    system = {i.get("code") for i in rest.get("interaction", [])}
    abilities = ServerAbilities(
        fhir_version=str(statement.get("fhirVersion", "")),
        batch="batch" in system,
        transaction="transaction" in system,
    )
    for resource in rest.get("resource", []):
        rtype = resource.get("type")
        abilities.interactions[rtype] = {i.get("code") for i in resource.get("interaction", [])}
        abilities.search_params[rtype] = {p.get("name") for p in resource.get("searchParam", [])}
    return abilities


@dataclass
class CapabilityReport:
    problems: list[str] = field(default_factory=list)  # the run cannot work
    warnings: list[str] = field(default_factory=list)  # not declared; the run tries anyway


def check_capabilities(
    abilities: ServerAbilities,
    reads: dict[str, set[str]],
    writes: set[str],
    needs_transaction: bool,
) -> CapabilityReport:
    """What the CapabilityStatement says against what the run will do.

    ``reads`` maps resource types to the search parameters the run will use. A resource type the
    statement does not list at all is only a warning: many servers under-declare. A listed type
    without a needed interaction, a FHIR version other than R4, or no transactions when writing
    stop the run before it starts.
    """
    report = CapabilityReport()
    if not abilities.fhir_version.startswith("4.0"):
        report.problems.append(
            f"the server speaks FHIR {abilities.fhir_version or '?'}, not R4 (4.0.x)"
        )
    for rtype, params in sorted(reads.items()):
        if rtype not in abilities.interactions:
            report.warnings.append(f"{rtype} is not in the CapabilityStatement")
            continue
        if not abilities.can(rtype, "search-type"):
            report.problems.append(f"{rtype}: the server does not offer search")
        for param in sorted(params):
            if not abilities.searchable(rtype, param):
                report.warnings.append(f"{rtype}: search parameter '{param}' is not declared")
    for rtype in sorted(writes):
        if rtype not in abilities.interactions:
            report.warnings.append(f"{rtype} is not in the CapabilityStatement")
            continue
        for interaction in ("create", "update"):
            if not abilities.can(rtype, interaction):
                report.problems.append(f"{rtype}: the server does not allow {interaction}")
    if needs_transaction and not abilities.transaction:
        report.problems.append("the server does not accept transaction Bundles")
    return report


def raise_for(report: CapabilityReport) -> None:
    if report.problems:
        raise FhirServerError(
            "the FHIR server cannot serve this run: " + "; ".join(report.problems)
        )


async def ungranted_reads(client: FhirClient, resource_types: Iterable[str]) -> list[str]:
    """The types the SMART access token's granted scopes do not let the run read (none with
    any other authentication: the server says so by refusing). The token is fetched first if
    no request has fetched one yet."""
    auth = client.auth
    if not isinstance(auth, SmartBackendAuth):
        return []
    if auth.tokens_fetched == 0:
        try:
            await client.capabilities()  # any request fetches the token
        except FhirServerError:
            if auth.tokens_fetched == 0:
                raise  # the token itself was refused
    return sorted(t for t in set(resource_types) if not scope_reads(auth.granted_scope, t))
