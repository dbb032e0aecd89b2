"""A small, FHIRPath-like path language for reading only what a fact needs.

Grammar (written in mapping files):

    path        := alternative ( "|" alternative )*
    alternative := step ( "." step )*
    step        := name [ "[" subpath " in " valueset-id "]" | "[" subpath " = '" text "']" ]
                 | "resolve()"

Steps walk into JSON objects and flatten lists, as FHIRPath does. A bracket keeps only the list
elements whose ``subpath`` holds a coding in the value set, for example
``component[code in relieve-pain-type-component].valueCodeableConcept``; ``[sub = 'text']`` keeps
those whose ``sub`` is that text (``extension[url = '...'].valueCode``). Alternatives are tried
in order and the first that yields anything wins, which is how FHIR choice types
(``effectiveDateTime | effectivePeriod.end``) are read.

``resolve()`` follows a Reference to the resource it names (``medicationReference.resolve().code``).
The mapper attaches the referenced resource to the Reference before the path is walked (see
``RESOLVED``), from the same source or a contained resource; an unresolved one yields nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.errors import ConfigError
from service.terminology import ValueSet

_STEP = re.compile(
    r"^([A-Za-z_][A-Za-z0-9_]*)"
    r"(?:\[\s*([A-Za-z0-9_.]+)\s+in\s+([A-Za-z0-9_.-]+)\s*\]"
    r"|\[\s*([A-Za-z0-9_.]+)\s*=\s*'([^']*)'\s*\])?$"
)


# Where the mapper puts the resource a Reference points to; no FHIR element has this name.
RESOLVED = "\x00resolved"
_RESOLVE_STEP = "resolve()"
_VALUESET_FILTER = re.compile(r"\[\s*[A-Za-z0-9_.]+\s+in\s+([A-Za-z0-9_.-]+)\s*\]")


def valuesets_named(source: str) -> list[str]:
    """The value set ids a path's filters name (``component[code in relieve-pain-types]``)."""
    return _VALUESET_FILTER.findall(source)


@dataclass(frozen=True, slots=True)
class _Step:
    name: str
    filter_path: tuple[str, ...] | None
    filter_valueset: ValueSet | None
    filter_text: str | None = None


@dataclass(frozen=True, slots=True)
class Path:
    """A compiled path; ``values(resource)`` returns every value it reaches."""

    source: str
    alternatives: tuple[tuple[_Step, ...], ...]

    def values(self, resource: Any) -> list[Any]:
        for steps in self.alternatives:
            found = _walk([resource], steps)
            if found:
                return found
        return []

    def first(self, resource: Any) -> Any:
        found = self.values(resource)
        return found[0] if found else None

    def wrong_types(self, resource: Any) -> list[tuple[str, str]]:
        """Elements on this path that hold a JSON value of the wrong type (a string where an
        object must be, as in ``"code": "C79.51"``): reading them yields nothing, and the
        caller reports that instead of treating the element as silently absent."""
        problems: list[tuple[str, str]] = []
        for steps in self.alternatives:
            problems.extend(_wrong_types(resource, steps))
        return problems


def _children(items: list[Any], name: str) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        child = item.get(name)
        if child is None:
            continue
        if isinstance(child, list):
            out.extend(element for element in child if element is not None)
        else:
            out.append(child)
    return out


def _walk(items: list[Any], steps: tuple[_Step, ...]) -> list[Any]:
    for step in steps:
        items = _children(items, RESOLVED if step.name == _RESOLVE_STEP else step.name)
        if step.filter_path is not None and step.filter_valueset is not None:
            valueset, sub = step.filter_valueset, step.filter_path
            items = [
                item
                for item in items
                if any(valueset.matches_concept(v) for v in _walk_names([item], sub))
            ]
        elif step.filter_path is not None:
            text, sub = step.filter_text, step.filter_path
            items = [item for item in items if text in _walk_names([item], sub)]
        if not items:
            return []
    return items


def _wrong_types(resource: Any, steps: tuple[_Step, ...]) -> list[tuple[str, str]]:
    """(element, problem) for elements a walk must step into (more steps follow) that are not
    objects."""
    problems: list[tuple[str, str]] = []
    items = [resource]
    walked: list[str] = []
    for position, step in enumerate(steps):
        if step.name == _RESOLVE_STEP:
            items = _children(items, RESOLVED)
            continue
        walked.append(step.name)
        children = [
            item.get(step.name) for item in items if isinstance(item, dict) and step.name in item
        ]
        flat: list[Any] = []
        for child in children:
            flat.extend(child if isinstance(child, list) else [child])
        needs_object = position < len(steps) - 1 or step.filter_path is not None
        if needs_object:
            wrong = [item for item in flat if item is not None and not isinstance(item, dict)]
            if wrong:
                problems.append((".".join(walked), f"is {_json_type(wrong[0])}, not an object"))
        items = [item for item in flat if isinstance(item, dict)]
        if not items:
            break
    return problems


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "a " + type(value).__name__


def concept_wrong_types(concept: Any) -> str | None:
    """Why a value tested against a value set is not a CodeableConcept or Coding, if it is not:
    FHIR JSON writes ``coding`` as an array of objects and ``system``/``code`` as strings."""
    if not isinstance(concept, dict):
        return f"is {_json_type(concept)}, not a CodeableConcept"
    coding = concept.get("coding")
    if coding is not None:
        if not isinstance(coding, list):
            return f"has 'coding' as {_json_type(coding)}, not a list of Codings"
        if any(not isinstance(item, dict) for item in coding):
            return "has a 'coding' entry that is not an object"
        items = coding
    else:
        items = [concept]
    for item in items:
        for key in ("system", "code"):
            if key in item and item[key] is not None and not isinstance(item[key], str):
                return f"has a Coding '{key}' that is {_json_type(item[key])}, not a string"
    return None


def _walk_names(items: list[Any], names: tuple[str, ...]) -> list[Any]:
    for name in names:
        items = _children(items, name)
    return items


def compile_path(source: str, valuesets: Mapping[str, ValueSet], where: str) -> Path:
    """Parse a path; ``where`` names the file and field for error messages."""
    alternatives: list[tuple[_Step, ...]] = []
    for alternative in source.split("|"):
        steps: list[_Step] = []
        for raw in _split_steps(alternative.strip()):
            if raw == _RESOLVE_STEP:
                if not steps:
                    raise ConfigError(
                        f"{where}: resolve() needs a Reference before it in '{source}'"
                    )
                steps.append(_Step(_RESOLVE_STEP, None, None))
                continue
            match = _STEP.match(raw)
            if match is None:
                raise ConfigError(f"{where}: cannot read path step '{raw}' in '{source}'")
            name, sub, vs_id, text_sub, text = match.groups()
            valueset = None
            if vs_id is not None:
                valueset = valuesets.get(vs_id)
                if valueset is None:
                    raise ConfigError(f"{where}: path '{source}' names unknown value set '{vs_id}'")
            if text_sub is not None:
                steps.append(_Step(name, tuple(text_sub.split(".")), None, text))
                continue
            steps.append(_Step(name, tuple(sub.split(".")) if sub else None, valueset))
        if not steps:
            raise ConfigError(f"{where}: empty path alternative in '{source}'")
        alternatives.append(tuple(steps))
    return Path(source, tuple(alternatives))


def resolved_elements(path: Path) -> set[str]:
    """Top-level elements a path follows with resolve() (``medicationReference``)."""
    return {
        steps[0].name
        for steps in path.alternatives
        if len(steps) > 1 and steps[1].name == _RESOLVE_STEP
    }


def _split_steps(text: str) -> list[str]:
    """Split on dots that are not inside a bracket filter."""
    steps: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "." and depth == 0:
            steps.append("".join(current))
            current = []
        else:
            current.append(char)
    steps.append("".join(current))
    return [step.strip() for step in steps if step.strip()] if text else []
