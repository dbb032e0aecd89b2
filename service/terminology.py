"""Value sets and code matching.

``ValueSet``: a FHIR ValueSet loaded into fast (system, code) membership sets, plus ``regex``
filters on ``code`` evaluated here (no terminology server needed).

``CodeCanonicalizer``: rewrites the codings of a resource to the form the value sets use, by rules
the mapping declares as data (system aliases, characters a code system ignores, whitespace,
trailing slashes, http vs https). Matching itself stays an exact set lookup.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from service.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ValueSet:
    """An expanded value set: every listed (system, code) pair, and regex filters per system."""

    id: str
    url: str
    title: str
    codes: frozenset[tuple[str, str]]
    patterns: tuple[tuple[str, re.Pattern[str]], ...] = ()

    def contains(self, system: str, code: str) -> bool:
        if (system, code) in self.codes:
            return True
        return any(system == s and p.fullmatch(code) for s, p in self.patterns)

    def matches_concept(self, concept: Any) -> bool:
        """True when any coding of a CodeableConcept (or a bare Coding) is in the set."""
        if not self.patterns:
            return any(pair in self.codes for pair in codings(concept))
        return any(self.contains(system, code) for system, code in codings(concept))

    @property
    def code_strings(self) -> frozenset[str]:
        return frozenset(code for _, code in self.codes)

    @property
    def systems(self) -> frozenset[str]:
        return frozenset(s for s, _ in self.codes) | {s for s, _ in self.patterns}


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


def _expand(
    resource: Mapping[str, Any], source: Path
) -> tuple[frozenset[tuple[str, str]], tuple[tuple[str, re.Pattern[str]], ...]]:
    """Explicit concepts and ``regex`` filters on ``code`` from compose.include, or an expansion.

    Other filters (is-a, descendent-of...) need a terminology server; rather than silently
    matching nothing, they are refused so the author lists the codes explicitly.
    """
    name = resource.get("id")
    pairs: set[tuple[str, str]] = set()
    patterns: list[tuple[str, re.Pattern[str]]] = []
    for entry in resource.get("expansion", {}).get("contains", []):
        pairs.add((entry["system"], entry["code"]))
    for include in resource.get("compose", {}).get("include", []):
        system = include.get("system")
        if include.get("valueSet") or not isinstance(system, str):
            raise ConfigError(
                f"{source}: ValueSet '{name}' has an include without a system or with nested "
                "value sets, which cannot be expanded offline; list the codes instead"
            )
        filters = include.get("filter") or []
        for rule in filters:
            if rule.get("property") != "code" or rule.get("op") != "regex":
                raise ConfigError(
                    f"{source}: ValueSet '{name}' uses a '{rule.get('op')}' filter on "
                    f"'{rule.get('property')}', which cannot be expanded offline; list the codes "
                    "in compose.include.concept (only 'regex' filters on 'code' are evaluated here)"
                )
            try:
                patterns.append((system, re.compile(str(rule.get("value", "")))))
            except re.error as exc:
                raise ConfigError(
                    f"{source}: ValueSet '{name}' has an invalid regex filter ({exc})"
                ) from exc
        concepts = include.get("concept")
        if not concepts and not filters:
            raise ConfigError(f"{source}: ValueSet '{name}' has an include without concepts")
        pairs.update((system, str(concept["code"])) for concept in concepts or [])
    if resource.get("compose", {}).get("exclude"):
        raise ConfigError(f"{source}: compose.exclude is not supported; remove the codes instead")
    if not pairs and not patterns:
        raise ConfigError(f"{source}: ValueSet '{name}' contains no codes")
    return frozenset(pairs), tuple(patterns)


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
    url = resource.get("url")
    if url is not None and not _url_names(str(url), vs_id):
        raise ConfigError(
            f"{path}: ValueSet url '{url}' does not end in its id '{vs_id}' (the url of a value "
            f"set is ...ValueSet:<id>, as in urn:prescreen:fhir:ValueSet:{vs_id}, or "
            ".../ValueSet/<id> for an http URL): correct the url or the id"
        )
    codes, patterns = _expand(resource, path)
    return ValueSet(
        id=vs_id,
        url=str(resource.get("url", "")),
        title=str(resource.get("title", vs_id)),
        codes=codes,
        patterns=patterns,
    )


def _url_names(url: str, vs_id: str) -> bool:
    """Whether a canonical url names the value set ``vs_id`` (``ValueSet/<id>`` in an http
    URL, ``ValueSet:<id>`` in a URN)."""
    return url.endswith((f"ValueSet/{vs_id}", f"ValueSet:{vs_id}"))


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


# --- canonical codes ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SystemRule:
    """How one code system may be written: other URIs for it, characters its codes ignore."""

    system: str
    aliases: tuple[str, ...] = ()
    alias_patterns: tuple[re.Pattern[str], ...] = ()
    ignore_in_code: str = ""


@dataclass
class CodeCanonicalizer:
    """Rewrites codings to the (system, code) the value sets list, by rules given as data.

    A coding already in canonical form costs one set lookup. Others are canonicalised once and
    remembered: whitespace around system and code, a trailing ``/``, ``https`` for ``http``
    (each when enabled), an alias or alias pattern of a system, and characters a system's codes
    ignore (``C7951`` for ``C79.51``), for listed codes and regex filters alike: a code a
    system's regex filters do not match as written is given the spelling they match, with the
    ignored characters taken out or put back (at most two of them), if one does.
    """

    valuesets: Mapping[str, ValueSet]
    rules: tuple[SystemRule, ...] = ()
    trim_whitespace: bool = True
    ignore_trailing_slash: bool = True
    ignore_scheme: bool = True
    _known: frozenset[tuple[str, str]] = field(init=False)
    _systems: dict[str, str] = field(init=False)
    _patterns: list[tuple[re.Pattern[str], str]] = field(init=False)
    _code_keys: dict[tuple[str, str], str] = field(init=False)
    _ignored: dict[str, str] = field(init=False)
    _regexes: dict[str, tuple[re.Pattern[str], ...]] = field(init=False)
    _memo: dict[tuple[str, str], tuple[str, str]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._known = frozenset(pair for vs in self.valuesets.values() for pair in vs.codes)
        self._systems = {}
        for vs in self.valuesets.values():
            for system in vs.systems:
                self._systems.setdefault(self.system_key(system), system)
        self._patterns = []
        self._ignored = {}
        for rule in self.rules:
            self._systems[self.system_key(rule.system)] = rule.system
            for alias in rule.aliases:
                self._systems[self.system_key(alias)] = rule.system
            self._patterns.extend((pattern, rule.system) for pattern in rule.alias_patterns)
            if rule.ignore_in_code:
                self._ignored[rule.system] = rule.ignore_in_code
        regexes: dict[str, list[re.Pattern[str]]] = {}
        for vs in self.valuesets.values():
            for system, pattern in vs.patterns:
                regexes.setdefault(system, []).append(pattern)
        self._regexes = {system: tuple(found) for system, found in regexes.items()}
        self._code_keys = {}
        for system, code in self._known:
            ignored = self._ignored.get(system)
            if ignored:
                self._code_keys[(system, _strip_chars(code, ignored))] = code

    def system_key(self, system: str) -> str:
        """The form two spellings of one system URI share."""
        if self.trim_whitespace:
            system = system.strip()
        if self.ignore_trailing_slash:
            system = system.rstrip("/")
        if self.ignore_scheme and system.startswith("https://"):
            system = "http://" + system[len("https://") :]
        return system

    def canonical(self, system: str, code: str) -> tuple[str, str]:
        if (system, code) in self._known:
            return system, code
        found = self._memo.get((system, code))
        if found is None:
            found = self._canonical(system, code)
            if len(self._memo) > 65_536:
                self._memo.clear()
            self._memo[(system, code)] = found
        return found

    def _canonical(self, system: str, code: str) -> tuple[str, str]:
        key = self.system_key(system)
        canonical_system = self._systems.get(key) or next(
            (s for p, s in self._patterns if p.fullmatch(key)), None
        )
        if canonical_system is None:
            return system, code  # a system no value set uses: nothing to match, left as written
        canonical_code = code.strip() if self.trim_whitespace else code
        ignored = self._ignored.get(canonical_system)
        if ignored:
            stripped = _strip_chars(canonical_code, ignored)
            listed = self._code_keys.get((canonical_system, stripped))
            if listed is not None:
                canonical_code = listed
            else:
                canonical_code = self._regex_spelling(canonical_system, canonical_code, ignored)
        return canonical_system, canonical_code

    def _regex_spelling(self, system: str, code: str, ignored: str) -> str:
        """The spelling of ``code`` a regex filter of ``system`` matches (``C83.30`` for a
        filter written with the dot, ``C8330`` without): first without the ignored
        characters, then with one or two of them put back at any place; else as written."""
        patterns = self._regexes.get(system, ())
        if not patterns or any(p.fullmatch(code) for p in patterns):
            return code
        for candidate in _spellings(_strip_chars(code, ignored), ignored):
            if any(p.fullmatch(candidate) for p in patterns):
                return candidate
        return code

    def code_variants(self, code: str, systems: Iterable[str]) -> set[str]:
        """Spellings of a listed code the rules accept (for raw-text prefilters)."""
        variants = {code}
        for system in systems:
            ignored = self._ignored.get(system)
            if ignored:
                variants.add(_strip_chars(code, ignored))
        return variants

    def canonicalize(self, resource: Any) -> list[tuple[dict[str, Any], str, str]]:
        """Rewrite every Coding (any object with string ``system`` and ``code``) in place;
        returns (coding, old system, old code) for each change, so it can be undone."""
        changed: list[tuple[dict[str, Any], str, str]] = []
        stack = [resource]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                system, code = item.get("system"), item.get("code")
                if isinstance(system, str) and isinstance(code, str):
                    canonical = self.canonical(system, code)
                    if canonical != (system, code):
                        item["system"], item["code"] = canonical
                        changed.append((item, system, code))
                stack.extend(v for v in item.values() if isinstance(v, dict | list))
            elif isinstance(item, list):
                stack.extend(v for v in item if isinstance(v, dict | list))
        return changed


def _spellings(bare: str, chars: str, most: int = 2) -> Iterator[str]:
    """``bare``, then ``bare`` with one of ``chars`` inserted anywhere, then with two."""
    yield bare
    level = [bare]
    for _ in range(most):
        level = [
            text[:at] + char + text[at:]
            for text in level
            for at in range(len(text) + 1)
            for char in chars
        ]
        yield from level


def _strip_chars(code: str, chars: str) -> str:
    return code.translate({ord(c): None for c in chars})
