"""Finding rule sets by trial name in the configured rules folder."""

from __future__ import annotations

from pathlib import Path

from service.errors import ConfigError
from service.ruleset.engines import ENGINE_NAMES
from service.ruleset.loader import RuleSet, load_ruleset
from service.settings import Settings

RULE_SUFFIX = ".yaml"
TEST_SUFFIX = ".tests.yaml"


def available_trials(rules_dir: Path) -> list[str]:
    if not rules_dir.is_dir():
        return []
    return sorted(
        path.name.removesuffix(RULE_SUFFIX)
        for path in rules_dir.glob(f"*{RULE_SUFFIX}")
        if not path.name.endswith(TEST_SUFFIX)
    )


def rule_file(trial: str, settings: Settings) -> Path:
    path = settings.rules_dir / f"{trial}{RULE_SUFFIX}"
    if not path.is_file():
        known = ", ".join(available_trials(settings.rules_dir)) or "none"
        raise ConfigError(
            f"unknown trial '{trial}': no {path.name} in {settings.rules_dir} (available: {known})"
        )
    return path


def test_file(trial: str, settings: Settings) -> Path:
    return settings.rules_dir / f"{trial}{TEST_SUFFIX}"


def load_trial(
    trial: str, settings: Settings, every_engine: bool = False, check_fields: bool | None = None
) -> RuleSet:
    """A trial's rule set, compiled for the configured engine (``every_engine``: for all of
    them, as rule checks and rule tests need).

    ``check_fields`` (default: with ``every_engine``) adds the static check of every field a
    rule reads against the facts' declared shapes. It costs about a quarter of a second of CPU
    per process (it parses every expression again), so the authoring commands (``rules check``,
    ``rules test``, ``trial new``) and the long-lived service run it, and a screening run leaves
    it to them: its dry run on a sample patient still checks what it reaches, and a field it
    misses fails as an ``evaluation-error`` naming the criterion, the expression and the field.
    """
    engines = ENGINE_NAMES if every_engine else (settings.cel_engine,)
    checked = not (every_engine if check_fields is None else check_fields)
    return load_ruleset(
        rule_file(trial, settings), settings.mappings_dir, engines, shapes_checked=checked
    )
