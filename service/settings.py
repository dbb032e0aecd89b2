"""Configuration: environment variables ``PRESCREEN_*`` or a ``.env`` file; CLI flags override.

Every option is listed in README.md, "Configuration".
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    cel_engine: EngineName = Field(
        default="cel",
        description="CEL engine: cel (Rust, fast, thread-safe) or celpy (pure Python)",
    )
    subject_identifier_system: str = Field(
        default="urn:prescreen:research-subject",
        description="ResearchSubject.identifier.system of the subjects prescreen writes",
    )
    log_level: str = Field(default="INFO", description="logging level (never logs PHI)")

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
        description="scopes requested with the SMART token; by default system/<Type>.read for "
        "every resource type the mapping reads, plus the write-back scopes",
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
    cds_issuers: str = Field(
        default="{}", description='JSON {"EHR iss": "its JWKS URL"}: EHRs trusted for CDS Hooks'
    )
    max_body_bytes: int = Field(default=5_000_000, description="largest request body accepted")
    debounce_seconds: float = Field(
        default=2.0, description="quiet time after a notification before re-screening"
    )
    write_back: bool = Field(
        default=True, description="event-driven re-screens write ResearchSubjects back"
    )
    webhook_url: str | None = Field(default=None, description="coordinator alert webhook")
    webhook_secret: SecretStr | None = Field(default=None, description="HMAC key for it")
    smtp_host: str | None = Field(default=None, description="SMTP server for alert e-mails")
    smtp_port: int = Field(default=25, description="its port")
    smtp_from: str = Field(default="prescreen@localhost", description="alert sender")
    smtp_to: str = Field(default="", description="comma-separated coordinator addresses")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
