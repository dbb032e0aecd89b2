"""Configuration: environment variables ``PRESCREEN_*`` or a ``.env`` file; CLI flags override.

Every option is listed in docs/configuration.md.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.ndjson_files import BLOCK_BYTES, MAX_LINE_BYTES
from service.ruleset.engines import EngineName

_REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRESCREEN_", env_file=".env", extra="ignore")

    rules_dir: Path = Field(
        default=_REPO_ROOT / "rules", description="folder of rule sets, <trial>.yaml"
    )
    mappings_dir: Path = Field(
        default=_REPO_ROOT / "fhir_mappings",
        description="folder of mappings, <mapping>.yaml, and their value sets",
    )
    samples_dir: Path = Field(
        default=_REPO_ROOT / "samples", description="folder of shipped sample data (prescreen demo)"
    )
    decision_reasons: Path = Field(
        default=_REPO_ROOT / "service" / "ui" / "decision_reasons.yaml",
        description="reasons offered for each closing decision and for a flag for review (YAML)",
    )
    cel_engine: EngineName = Field(
        default="cel",
        description="CEL engine: cel (Rust, fast, thread-safe) or celpy (pure Python)",
    )
    subject_identifier_system: str = Field(
        default="urn:prescreen:research-subject",
        description="ResearchSubject.identifier.system of the subjects prescreen writes",
    )
    log_level: str = Field(default="INFO", description="logging level (never logs PHI)")
    feasibility_suppress_below: int = Field(
        default=5,
        ge=1,
        description="feasibility reports show counts below this as <N (and hide as many others "
        "as it takes for none of them to be worked out)",
    )
    max_line_bytes: int = Field(
        default=MAX_LINE_BYTES,
        ge=BLOCK_BYTES,
        description="longest NDJSON line read, in bytes with its line end (at least 4 MiB): a "
        "longer line is skipped unread, in bounded memory, and reported as the input issue "
        "line-too-long",
    )

    # --- the FHIR server (live screening and write-back) ---
    fhir_url: str | None = Field(default=None, description="FHIR R4 base URL")
    fhir_auth: Literal["none", "bearer", "basic", "smart"] = Field(
        default="none", description="authentication to the FHIR server"
    )
    fhir_token: SecretStr | None = Field(default=None, description="static bearer token")
    fhir_username: str | None = Field(default=None, description="basic auth user")
    fhir_password: SecretStr | None = Field(default=None, description="basic auth password")
    smart_client_id: str | None = Field(default=None, description="SMART backend client id")
    smart_private_key: Path | None = Field(
        default=None, description="PEM private key signing the SMART client assertion"
    )
    smart_kid: str | None = Field(default=None, description="key id (kid) of that key in the JWKS")
    smart_algorithm: Literal["RS384", "ES384"] = Field(
        default="RS384", description="assertion signing algorithm"
    )
    smart_token_url: str | None = Field(
        default=None, description="token endpoint; discovered from .well-known when empty"
    )
    smart_scope: str | None = Field(
        default=None,
        description="scopes requested with the SMART token; by default what the run does: "
        "system/<Type>.rs (v1: .read) for every resource type the mappings read, plus write "
        "scopes for the types a write-back writes (only when it writes back)",
    )
    fhir_timeout: float = Field(default=30.0, description="seconds per HTTP request")
    fhir_concurrency: int = Field(default=8, description="HTTP requests in flight at most")
    fhir_retries: int = Field(default=5, description="attempts per request (429/5xx/network)")
    fhir_page_size: int = Field(default=200, description="_count asked of searches")
    fhir_patients_per_request: int = Field(
        default=25, description="patients whose resources one search (or batch) fetches"
    )
    fhir_codes_per_request: int = Field(
        default=40, description="codes per token search parameter (long value sets are chunked)"
    )

    # --- Bulk Data $export (prescreen screen --bulk, prescreen export) ---
    bulk_type_filter: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="send the mappings' code and status filters as _typeFilter: auto (when the "
        "server's CapabilityStatement or $export OperationDefinition declares it), always, never",
    )
    bulk_poll_seconds: float = Field(
        default=2.0,
        gt=0,
        description="first wait between two status polls when the server gives no Retry-After; "
        "it grows by half each time up to PRESCREEN_BULK_POLL_MAX_SECONDS",
    )
    bulk_poll_max_seconds: float = Field(
        default=60.0, gt=0, description="longest wait between two polls without a Retry-After"
    )
    bulk_max_wait_seconds: float = Field(
        default=86_400.0,
        gt=0,
        description="give up waiting for an export after this long (the job is kept: the same "
        "command resumes it)",
    )
    bulk_retry_after_max_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="longest Retry-After honoured while polling an export or downloading its "
        "files (a longer one is shortened to this)",
    )
    bulk_download_concurrency: int = Field(
        default=4, ge=1, description="export files downloaded at the same time"
    )
    bulk_poll_min_seconds: float = Field(
        default=1.0,
        gt=0,
        description="shortest wait before asking an export's server again, whatever its "
        "Retry-After says (0 or a date in the past included)",
    )
    bulk_max_status_bytes: int = Field(
        default=1 << 20,
        gt=0,
        description="largest answer of an export's status URL other than the manifest "
        "(progress, an error): a larger one stops the run (exit 2; the job is kept to resume)",
    )
    bulk_max_manifest_bytes: int = Field(
        default=64 << 20,
        gt=0,
        description="largest export manifest read: a larger one stops the run (exit 2; the job "
        "is kept to resume)",
    )
    bulk_max_file_bytes: int = Field(
        default=32 << 30,
        gt=0,
        description="largest export file stored (as sent, gzip-encoded or not): a larger one "
        "stops the run (exit 2) and its partial file is removed",
    )

    # --- the service (prescreen serve) ---
    database_url: str = Field(
        default="sqlite:///prescreen.db", description="SQLAlchemy URL: SQLite file or PostgreSQL"
    )
    host: str = Field(default="127.0.0.1", description="address prescreen serve listens on")
    port: int = Field(default=8000, description="port prescreen serve listens on")
    public_url: str | None = Field(
        default=None, description="URL the service is reached at (CDS Hooks aud, subscriptions)"
    )
    trials: str = Field(default="", description="comma-separated trials served (default: all)")
    api_keys: str = Field(
        default="{}",
        description='JSON {"name": {"key": "...", "scopes": ["screen", ...]}}; scopes: screen, '
        "runs, candidates, decide, notify",
    )
    oauth_jwks_url: str | None = Field(default=None, description="JWKS for OAuth2 bearer JWTs")
    oauth_issuer: str | None = Field(default=None, description="required iss of those JWTs")
    oauth_audience: str | None = Field(default=None, description="required aud of those JWTs")
    oauth_max_token_seconds: float = Field(
        default=86_400.0,
        gt=0,
        description="longest life accepted for those JWTs: a token whose exp lies further "
        "ahead (or further after its iat) is refused",
    )
    cds_issuers: str = Field(
        default="{}", description='JSON {"EHR iss": "its JWKS URL"}: EHRs trusted for CDS Hooks'
    )
    cds_fhir_servers: str = Field(
        default="",
        description="comma-separated FHIR base URLs a CDS Hooks call may name as fhirServer "
        "(compared normalised); default: the FHIR base URL (PRESCREEN_FHIR_URL)",
    )
    cors_origins: str = Field(
        default="",
        description="comma-separated origins (https://ehr.example) of browser-based EHRs allowed "
        "to call the CDS Hooks endpoints (CORS, preflight included); never *; default: none",
    )
    jwks_timeout_seconds: float = Field(
        default=3.0,
        gt=0,
        description="longest wait for a JWKS (OAuth2 and CDS Hooks issuers), whole fetch",
    )
    jwks_cache_seconds: float = Field(
        default=300.0, gt=0, description="how long fetched signing keys are used before a refetch"
    )
    jwks_refresh_seconds: float = Field(
        default=30.0,
        ge=0,
        description="a JWKS is fetched again at most once per this interval after a failed fetch "
        "or for a token whose kid it lacks (failures and unknown kids are cached meanwhile)",
    )
    max_body_bytes: int = Field(
        default=5_000_000,
        description="largest request body accepted, counted on the bytes received (chunked too)",
    )
    ndjson_roots: str = Field(
        default="",
        description="comma-separated folders under which POST /runs may read NDJSON "
        "(source: ndjson); empty: NDJSON runs through the API are refused",
    )
    readiness_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="how long /readyz reuses its last FHIR server check (it needs no credentials)",
    )
    debounce_seconds: float = Field(
        default=2.0, description="quiet time after a notification before re-screening"
    )
    write_back: bool = Field(
        default=True, description="event-driven re-screens write ResearchSubjects back"
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="how long a replica's claim on a population run, an alert being sent or a "
        "patient's write-back holds without renewal (renewed every third of it while the work "
        "goes on); another replica takes the work over once it has expired",
    )
    webhook_url: str | None = Field(default=None, description="coordinator alert webhook")
    webhook_secret: SecretStr | None = Field(default=None, description="HMAC key for it")
    smtp_host: str | None = Field(default=None, description="SMTP server for alert e-mails")
    smtp_port: int = Field(default=25, description="its port")
    smtp_from: str = Field(default="prescreen@localhost", description="alert sender")
    smtp_to: str = Field(default="", description="comma-separated coordinator addresses")

    # --- a clinic's schedule (--appointments; the service's daily clinic screening) ---
    clinic_timezone: str = Field(
        default="UTC",
        description="IANA time zone of the clinic's calendar days (Europe/Berlin...): "
        "--appointments DATE..DATE and the daily schedule search from 00:00 of the first day to "
        "00:00 after the last in this zone",
    )
    appointment_ignored_statuses: str = Field(
        default="cancelled,entered-in-error,noshow",
        description="comma-separated Appointment statuses left out of a clinic list (their "
        "patients are not screened for that appointment)",
    )
    clinic_schedule_time: str = Field(
        default="",
        description="HH:MM (in clinic_timezone) at which the service screens the coming "
        "appointments every day and alerts coordinators; empty: no daily clinic screening",
    )
    clinic_schedule_days_ahead: int = Field(
        default=1,
        ge=1,
        le=31,
        description="the daily clinic screening reads the appointments of the next this many "
        "days (1: tomorrow's clinic)",
    )
    clinic_schedule_filters: str = Field(
        default="",
        description="Appointment search parameters narrowing the daily clinic list, NAME=VALUE "
        "separated by ';' (practitioner=Practitioner/12;service-type=spine-oncology)",
    )
    clinic_schedule_trials: str = Field(
        default="",
        description="comma-separated trials the daily clinic screening screens for; empty: "
        "every trial of the service",
    )

    @property
    def ignored_appointment_statuses(self) -> frozenset[str]:
        return frozenset(
            s.strip() for s in self.appointment_ignored_statuses.split(",") if s.strip()
        )

    # --- the web worklist (/ui) ---
    ui_mode: Literal["local", "oidc", "off"] = Field(
        default="local",
        description="how people sign in to /ui: local (users added with `prescreen users add`), "
        "oidc (the hospital's OpenID Connect provider), or off (no web worklist)",
    )
    oidc_issuer: str | None = Field(
        default=None, description="OpenID Connect issuer URL (its .well-known is read)"
    )
    oidc_client_id: str | None = Field(default=None, description="this service's OIDC client id")
    oidc_client_secret: SecretStr | None = Field(default=None, description="its client secret")
    oidc_scope: str = Field(default="openid profile email", description="scopes asked at sign-in")
    oidc_username_claim: str = Field(
        default="preferred_username",
        description="ID token claim giving the name shown and recorded for a person not linked "
        "to a `prescreen users` entry (falls back to sub); never used to find a user: people "
        "are linked by issuer and subject (`prescreen users link`)",
    )
    oidc_roles_claim: str | None = Field(
        default=None,
        description="ID token claim listing roles for people not linked to a `prescreen users` "
        "entry: viewer, coordinator, coordinator:<trial>, research, admin",
    )
    session_secret: SecretStr | None = Field(
        default=None,
        description="key signing the /ui session cookie; random at each start when unset (set it "
        "for several replicas)",
    )
    session_hours: float = Field(default=8.0, description="a /ui sign-in lasts this many hours")
    mrn_system: str = Field(
        default="",
        description="Identifier.system of the hospital's medical record numbers: the MRN shown "
        "and searched is the Patient identifier of this system among those the mapping's "
        "display section reads (typed MR); empty: the first of them in use",
    )
    sign_in_failures_allowed: int = Field(
        default=10,
        ge=1,
        description="failed password sign-ins of one name, or from one address, before each "
        "further try has to wait (429 with Retry-After)",
    )
    sign_in_window_seconds: float = Field(
        default=900.0,
        gt=0,
        description="failed sign-ins are counted over this long from the first one",
    )
    sign_in_longest_wait_seconds: float = Field(
        default=60.0,
        gt=0,
        le=900,
        description="the wait after each further failure grows (1 s, 2 s, 4 s...) up to this",
    )
    password_hash_concurrency: int = Field(
        default=2,
        ge=1,
        description="password checks (Argon2id, 64 MiB each) run at the same time, on threads "
        "of their own; more sign-ins wait their turn",
    )

    time_zone: str = Field(
        default="UTC",
        description="IANA time zone the web worklist shows times in (Europe/Zurich, "
        "America/New_York…); the database keeps UTC",
    )
    audit_to_fhir: bool = Field(
        default=False,
        description="also send the access audit to the FHIR server as AuditEvents (IHE Basic "
        "Audit Log Patterns), in the background with retries; the write-back scopes then "
        "include AuditEvent",
    )
    feasibility_report: Path | None = Field(
        default=None,
        description="a feasibility.json written by `prescreen feasibility` (or its folder): "
        "the research page shows it; unset, the page counts the worklist's latest results",
    )

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        name = value.strip()
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{name!r} is not an IANA time zone name "
                "(such as UTC, Europe/Zurich or America/New_York)"
            ) from None
        return name

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
