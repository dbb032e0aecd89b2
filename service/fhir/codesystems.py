"""The CodeSystems of the codes prescreen writes, as FHIR CodeSystem resources.

Every coding prescreen writes in a system of its own resolves to a published CodeSystem:

- ``terminology/*.json``: prescreen's own vocabularies, the same for every trial: criterion
  results (``urn:prescreen:criterion-result``), criterion attributes (``urn:prescreen:criterion-
  attribute``: the kind and manual flag carried as Observation components) and the two
  ``meta.tag`` systems (``urn:prescreen:key``, ``urn:prescreen:study``);
- one CodeSystem per rule set, built here from the rule set (data): its criterion codes, system
  ``urn:prescreen:criterion:<rule set id>``, version = the rule set's version. The copies for
  the shipped rule sets in ``terminology/criteria/`` are kept equal to what is built (tested);
  ``python -m service.fhir.codesystems`` writes them again after a rule set changes.

Write-back puts these on the server once (``WriteBack.publish_code_systems``).
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

import orjson

from service.errors import ConfigError
from service.fhir.client import Json
from service.ruleset.loader import Criterion, RuleSet
from service.settings import get_settings

# The repository's folder (an editable install); an installed package finds it beside the
# mappings folder instead (the container keeps both under /app).
TERMINOLOGY_DIR = Path(__file__).resolve().parents[2] / "terminology"
CRITERIA_DIR = TERMINOLOGY_DIR / "criteria"
CRITERION_SYSTEM_PREFIX = "urn:prescreen:criterion:"
# A Coding.display is for people scanning a list; the whole text is the concept's definition.
DISPLAY_LENGTH = 250


def criterion_system(ruleset: RuleSet) -> str:
    return f"{CRITERION_SYSTEM_PREFIX}{ruleset.id}"


def criterion_display(criterion: Criterion) -> str:
    return " ".join(criterion.text.split())[:DISPLAY_LENGTH]


def code_system_key(code_system: Json) -> str:
    """The deterministic key of a CodeSystem (``meta.tag`` ``urn:prescreen:key``)."""
    return f"{code_system['url']}:{code_system['version']}"


def criterion_code_system(ruleset: RuleSet) -> Json:
    """The rule set's criteria as a CodeSystem: code = criterion id, with kind and manual."""
    name = "".join(c if c.isalnum() else "_" for c in ruleset.id.upper())
    return {
        "resourceType": "CodeSystem",
        "id": f"prescreen-criterion-{ruleset.id}",
        "url": criterion_system(ruleset),
        "version": ruleset.version,
        "name": f"PRESCREEN_CRITERIA_{name}",
        "title": f"{ruleset.trial.acronym} eligibility criteria (prescreen rule set {ruleset.id})",
        "status": "active",
        "experimental": False,
        "publisher": "prescreen",
        "description": (
            f"The eligibility criteria of {ruleset.trial.nct_id} as evaluated by the prescreen "
            f"rule set {ruleset.id} {ruleset.version}: the code of each criterion Observation "
            "prescreen writes. Built from the rule set."
        ),
        "caseSensitive": True,
        "content": "complete",
        "property": [
            {
                "code": "kind",
                "description": "inclusion or exclusion (urn:prescreen:criterion-attribute)",
                "type": "code",
            },
            {
                "code": "manual",
                "description": "true when the criterion needs a clinician (always unknown)",
                "type": "boolean",
            },
        ],
        "concept": [
            {
                "code": criterion.id,
                "display": criterion_display(criterion),
                "definition": " ".join(criterion.text.split()),
                "property": [
                    {"code": "kind", "valueCode": criterion.kind},
                    {"code": "manual", "valueBoolean": criterion.manual},
                ],
            }
            for criterion in ruleset.criteria
        ],
    }


@cache
def _own_code_systems(folder: Path) -> tuple[bytes, ...]:
    return tuple(path.read_bytes() for path in sorted(folder.glob("*.json")))


def terminology_dir() -> Path:
    """``terminology/`` beside the configured mappings folder, else the repository's."""
    for folder in (get_settings().mappings_dir.parent / "terminology", TERMINOLOGY_DIR):
        if any(folder.glob("*.json")):
            return folder
    raise ConfigError(
        "prescreen's CodeSystems (terminology/*.json) are neither beside the mappings folder "
        "nor in the installation"
    )


def own_code_systems(folder: Path | None = None) -> list[Json]:
    """prescreen's own CodeSystems (a fresh copy each call: callers may add meta)."""
    return [orjson.loads(raw) for raw in _own_code_systems(folder or terminology_dir())]


def code_systems_for(ruleset: RuleSet) -> list[Json]:
    """Every CodeSystem the write-back of this rule set uses, in a stable order."""
    return [*own_code_systems(), criterion_code_system(ruleset)]


def published_criteria_file(ruleset: RuleSet, folder: Path = CRITERIA_DIR) -> Path:
    return folder / f"CodeSystem-criterion-{ruleset.id}.json"


def write_criteria_files(rulesets: list[RuleSet], folder: Path = CRITERIA_DIR) -> list[Path]:
    """Write the criterion CodeSystem of each rule set into the repository's folder."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for ruleset in rulesets:
        path = published_criteria_file(ruleset, folder)
        text = orjson.dumps(criterion_code_system(ruleset), option=orjson.OPT_INDENT_2)
        path.write_bytes(text + b"\n")
        written.append(path)
    return written


def main() -> None:
    """Write terminology/criteria/ again from every rule set in the configured rules folder
    (beside the configured mappings folder: the repository's by default)."""
    from service import catalog

    settings = get_settings()
    trials = catalog.available_trials(settings.rules_dir)
    rulesets = [catalog.load_trial(trial, settings) for trial in trials]
    folder = settings.mappings_dir.parent / "terminology" / "criteria"
    for path in write_criteria_files(rulesets, folder):
        sys.stdout.write(f"wrote {path}\n")


if __name__ == "__main__":
    main()
