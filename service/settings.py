"""Configuration: environment variables ``PRESCREEN_*`` or a ``.env`` file; CLI flags override.

Every option is listed in README.md, "Configuration".
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
