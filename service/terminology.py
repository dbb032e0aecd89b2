"""Value sets: FHIR ValueSet resources loaded into fast (system, code) membership sets."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from service.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ValueSet:
    """An expanded value set: every (system, code) pair it contains."""

    id: str
    url: str
    title: str
    codes: frozenset[tuple[str, str]]

    def contains(self, system: str, code: str) -> bool:
        return (system, code) in self.codes

    def matches_concept(self, concept: Any) -> bool:
        """True when any coding of a CodeableConcept (or a bare Coding) is in the set."""
        return any((coding_system, code) in self.codes for coding_system, code in codings(concept))

    @property
    def code_strings(self) -> frozenset[str]:
        return frozenset(code for _, code in self.codes)


def codings(concept: Any) -> Iterator[tuple[str, str]]:
    """The (system, code) pairs of a CodeableConcept or Coding; anything else yields none."""
    if not isinstance(concept, dict):
        return
    items = concept.get("coding")
    if items is None:
        items = [concept]
    if not isinstance(items, list):
        return
    for coding in items:
        if isinstance(coding, dict):
            system, code = coding.get("system"), coding.get("code")
            if isinstance(system, str) and isinstance(code, str):
                yield system, code


def _expand(resource: Mapping[str, Any], source: Path) -> frozenset[tuple[str, str]]:
    """Read explicit concepts from compose.include, or an existing expansion.

    Intensional filters (is-a, regex) need a terminology server; rather than silently
    matching nothing, they are refused so the author lists the codes explicitly.
    """
    pairs: set[tuple[str, str]] = set()
    for entry in resource.get("expansion", {}).get("contains", []):
        pairs.add((entry["system"], entry["code"]))
    for include in resource.get("compose", {}).get("include", []):
        if include.get("filter") or include.get("valueSet"):
            raise ConfigError(
                f"{source}: ValueSet '{resource.get('id')}' uses filters or nested value sets, "
                "which cannot be expanded offline; list the codes in compose.include.concept"
            )
        system = include.get("system")
        concepts = include.get("concept")
        if not isinstance(system, str) or not concepts:
            raise ConfigError(
                f"{source}: ValueSet '{resource.get('id')}' has an include without a system "
                "or without concepts"
            )
        pairs.update((system, str(concept["code"])) for concept in concepts)
    if resource.get("compose", {}).get("exclude"):
        raise ConfigError(f"{source}: compose.exclude is not supported; remove the codes instead")
    if not pairs:
        raise ConfigError(f"{source}: ValueSet '{resource.get('id')}' contains no codes")
    return frozenset(pairs)


def load_valueset(path: Path) -> ValueSet:
    try:
        resource = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(resource, dict) or resource.get("resourceType") != "ValueSet":
        raise ConfigError(f"{path}: not a FHIR ValueSet resource")
    vs_id = resource.get("id")
    if not isinstance(vs_id, str) or not vs_id:
        raise ConfigError(f"{path}: ValueSet has no id")
    return ValueSet(
        id=vs_id,
        url=str(resource.get("url", "")),
        title=str(resource.get("title", vs_id)),
        codes=_expand(resource, path),
    )


def load_valuesets(folders: Iterable[Path]) -> dict[str, ValueSet]:
    """Every ``*.json`` ValueSet in the folders, by id; duplicate ids are an error."""
    found: dict[str, ValueSet] = {}
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"{folder}: value set folder does not exist")
        for path in sorted(folder.glob("*.json")):
            valueset = load_valueset(path)
            if valueset.id in found:
                raise ConfigError(f"{path}: duplicate ValueSet id '{valueset.id}'")
            found[valueset.id] = valueset
    return found
