"""A new trial from the template: ``prescreen trial new NAME`` writes a mapping, its value sets,
a rule set and its rule tests that pass ``rules check`` and ``rules test`` as written, and
teach by their comments what to change (``trial_template/``, with ``__TRIAL__`` for the name).

The template is data like the shipped trials: its codes and thresholds are in its files, none
here. Nothing existing is ever overwritten.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from service.errors import ConfigError

TEMPLATE_DIR = Path(__file__).resolve().parent / "trial_template"
NAME = re.compile(r"^[a-z][a-z0-9-]*$")  # a rule set's id
ACRONYM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
NCT_ID = re.compile(r"^NCT\d{8}$")
PLACEHOLDER_NCT = "NCT00000000"


@dataclass(frozen=True)
class TrialFiles:
    """The files of a new trial, where they go and what they hold."""

    name: str
    files: tuple[tuple[Path, str], ...]


def plan_trial(
    name: str,
    rules_dir: Path,
    mappings_dir: Path,
    *,
    nct_id: str | None = None,
    acronym: str | None = None,
    title: str | None = None,
) -> TrialFiles:
    """The files ``name`` gets: rules and rule tests in ``rules_dir``, the mapping and its value
    sets in ``mappings_dir``. Refused: a name that is no rule-set id, or files that exist."""
    if not NAME.match(name):
        raise ConfigError(
            f"'{name}' cannot name a trial: lower-case letters, digits and hyphens, starting "
            "with a letter (it is the trial's id in every output)"
        )
    nct = nct_id or PLACEHOLDER_NCT
    if not NCT_ID.match(nct):
        raise ConfigError(f"'{nct}' is not an NCT number (NCT and 8 digits)")
    short = acronym or name.upper()
    if not ACRONYM.match(short):
        raise ConfigError(f"'{short}' cannot be an acronym: letters, digits and hyphens")
    values = {
        "__TRIAL__": name,
        "__ACRONYM__": short,
        "__NCT__": nct,
        # A JSON string is a YAML string: any title is safe in the rule file.
        "__TITLE__": json.dumps(title or f"{short}: the trial's official title (replace)"),
    }
    files: list[tuple[Path, str]] = []
    for template in sorted(TEMPLATE_DIR.rglob("*")):
        if not template.is_file():
            continue
        top, *rest = template.relative_to(TEMPLATE_DIR).parts
        base = rules_dir if top == "rules" else mappings_dir
        target = base.joinpath(*rest[:-1], rest[-1].replace("__TRIAL__", name))
        text = template.read_text(encoding="utf-8")
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        files.append((target, text))
    existing = [str(path) for path, _ in files if path.exists()]
    if existing:
        raise ConfigError(
            f"trial '{name}' would overwrite {', '.join(existing)}: trial new never "
            "overwrites (choose another name, or remove them)"
        )
    return TrialFiles(name, tuple(files))


def write_trial(planned: TrialFiles) -> list[Path]:
    written = []
    for path, text in planned.files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
