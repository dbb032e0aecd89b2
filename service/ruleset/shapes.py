"""Checking CEL expressions against the declared shapes of the facts, before anything runs.

The mapping declares every field of every fact, and every record has all of them: so a field a
rule reads can be checked without a patient, also inside a comprehension over a list of facts
(``pain_scores.exists(s, s.scroe > 4)``), where a dry run on a sample patient may never look
(``nrs_scores`` holds only usable scores, and the sample's one default record is not usable).

Types are followed through derived values (``nrs_scores`` is a list of ``pain_scores``
records), comprehensions, indexing, list and map literals; where a type cannot be known (a
function of one engine, a conditional whose branches differ) nothing is claimed. Two mistakes
are reported: a field a record (or a map written in the rules) does not have, and a whole
number compared or combined with a decimal one: numbers read from the data and parameters are
doubles, and the two engines disagree on ``score > 4`` (one compares, the other refuses).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from lark import Token, Tree

# --- the types ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scalar:
    name: str  # int, uint, double, string, bool, null, bytes


@dataclass(frozen=True)
class Record:
    """A record of a fact: every field always present."""

    fact: str
    fields: Mapping[str, CelType] = field(hash=False, compare=False)
    label: str = ""  # what it is called in messages, when not a fact's record
    quiet: bool = False  # its unknown keys have messages of their own (params, windows)

    def describe(self) -> str:
        return self.label or f"a {self.fact} record"


@dataclass(frozen=True)
class ListOf:
    element: CelType


@dataclass(frozen=True)
class MapOf:
    """A map; ``keys`` when every key is known (a map written in the rules, the parameters)."""

    value: CelType
    keys: frozenset[str] | None = None
    name: str = "a map"


@dataclass(frozen=True)
class Unknown:
    """A type that cannot be known here: nothing is claimed about it."""


@dataclass(frozen=True)
class Nothing:
    """The element type of an empty list literal: it takes the other branch's type."""


CelType = Union[Scalar, Record, ListOf, MapOf, Unknown, Nothing]  # noqa: UP007 (a runtime alias)

UNKNOWN = Unknown()
INT, UINT, DOUBLE = Scalar("int"), Scalar("uint"), Scalar("double")
STRING, BOOL, NULL, BYTES = Scalar("string"), Scalar("bool"), Scalar("null"), Scalar("bytes")


def value_type(value: Any) -> CelType:
    """The CEL type of a Python value as the facts and parameters hold it."""
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, float):
        return DOUBLE
    if isinstance(value, int):
        return INT
    if isinstance(value, str):
        return STRING
    if isinstance(value, list | tuple):
        elements = {value_type(v) for v in value}
        return ListOf(elements.pop() if len(elements) == 1 else STRING if not value else UNKNOWN)
    return UNKNOWN


def record_type(fact: str, defaults: Mapping[str, Any]) -> Record:
    """A fact's record from its default values (the mapping's declared fields), plus ``ref``."""
    return Record(fact, {"ref": STRING, **{name: value_type(v) for name, v in defaults.items()}})


def _unify(a: CelType, b: CelType) -> CelType:
    if a == b:
        return a
    if isinstance(a, Nothing):
        return b
    if isinstance(b, Nothing):
        return a
    if isinstance(a, ListOf) and isinstance(b, ListOf):
        element = _unify(a.element, b.element)
        return UNKNOWN if isinstance(element, Unknown) else ListOf(element)
    if isinstance(a, Record) and isinstance(b, Record) and a.fact == b.fact:
        return a
    return UNKNOWN


def describe(t: CelType) -> str:
    if isinstance(t, Scalar):
        return {"double": "a decimal number", "int": "a whole number"}.get(t.name, f"a {t.name}")
    if isinstance(t, Record):
        return t.describe()
    if isinstance(t, ListOf):
        inner = t.element
        return f"a list of {inner.fact} records" if isinstance(inner, Record) else "a list"
    if isinstance(t, MapOf):
        return t.name
    return "a value"


# --- the checker ----------------------------------------------------------------------------

_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_ORDERING = {
    "relation_lt": "<",
    "relation_le": "<=",
    "relation_gt": ">",
    "relation_ge": ">=",
    "relation_eq": "==",
    "relation_ne": "!=",
}
_ARITHMETIC = {
    "addition_add": "+",
    "addition_sub": "-",
    "multiplication_mul": "*",
    "multiplication_div": "/",
    "multiplication_mod": "%",
}
_STRING_METHODS = {"contains": BOOL, "startsWith": BOOL, "endsWith": BOOL, "matches": BOOL}
_FUNCTIONS: dict[str, CelType] = {
    "size": INT,
    "int": INT,
    "uint": UINT,
    "double": DOUBLE,
    "string": STRING,
    "bool": BOOL,
}


class ShapeChecker:
    """Types the expressions of one rule set; ``problems`` collects what is wrong."""

    def __init__(self, names: Mapping[str, CelType]) -> None:
        from celpy.celparser import CELParser

        self.names: dict[str, CelType] = dict(names)
        self._parser = CELParser()
        self.problems: list[str] = []
        self._source = ""

    def check(self, source: str) -> CelType:
        """Type one expression; its problems are added to ``problems``. An expression that
        does not parse is left to the engines (which report it with their own words)."""
        from celpy.celparser import CELParseError

        try:
            tree = self._parser.parse(source)
        except CELParseError:
            return UNKNOWN
        self._source = source
        return self._type(tree, self.names)

    def bind(self, name: str, t: CelType) -> None:
        self.names[name] = t

    # -- helpers

    def _text(self, node: Tree[Token] | Token) -> str:
        meta = getattr(node, "meta", None)
        if isinstance(node, Token):
            return str(node)
        if meta is not None and not meta.empty:
            return " ".join(self._source[meta.start_pos : meta.end_pos].split())
        return "…"

    def _add(self, problem: str) -> None:
        if problem not in self.problems:
            self.problems.append(problem)

    @staticmethod
    def _children(node: Tree[Token]) -> list[Tree[Token]]:
        return [c for c in node.children if isinstance(c, Tree)]

    # -- typing

    def _type(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        kind = node.data
        method = getattr(self, f"_t_{kind}", None)
        if method is not None:
            result: CelType = method(node, env)
            return result
        children = self._children(node)
        if len(children) == 1:  # a precedence level holding one operand
            return self._type(children[0], env)
        for child in children:
            self._type(child, env)
        return UNKNOWN

    def _t_expr(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        children = self._children(node)
        if len(children) == 1:
            return self._type(children[0], env)
        self._type(children[0], env)
        return _unify(self._type(children[1], env), self._type(children[2], env))

    def _t_conditionalor(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        return self._logical(node, env)

    def _t_conditionaland(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        return self._logical(node, env)

    def _logical(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        children = self._children(node)
        types = [self._type(child, env) for child in children]
        return types[0] if len(types) == 1 else BOOL

    def _t_relation(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        children = self._children(node)
        if len(children) == 1:
            return self._type(children[0], env)
        operator, right = children
        left_node = self._children(operator)[0]
        left = self._type(left_node, env)
        right_type = self._type(right, env)
        if operator.data == "relation_in":
            if isinstance(right_type, ListOf):
                self._numbers(left_node, left, right, right_type.element, "in")
            return BOOL
        self._numbers(left_node, left, right, right_type, _ORDERING.get(operator.data, "?"))
        return BOOL

    def _t_addition(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        return self._arithmetic(node, env)

    def _t_multiplication(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        return self._arithmetic(node, env)

    def _arithmetic(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        children = self._children(node)
        if len(children) == 1:
            return self._type(children[0], env)
        operator, right = children
        left_node = self._children(operator)[0]
        left = self._type(left_node, env)
        right_type = self._type(right, env)
        self._numbers(left_node, left, right, right_type, _ARITHMETIC.get(operator.data, "?"))
        if left == right_type and isinstance(left, Scalar | ListOf):
            return left
        return UNKNOWN

    def _numbers(
        self,
        left_node: Tree[Token],
        left: CelType,
        right_node: Tree[Token],
        right: CelType,
        operator: str,
    ) -> None:
        """A whole number against a decimal one: say how to write it."""
        if {left, right} != {INT, DOUBLE}:
            return
        whole, decimal = (left_node, right_node) if left == INT else (right_node, left_node)
        whole_text, decimal_text = self._text(whole), self._text(decimal)
        expression = f"'{self._text(left_node)} {operator} {self._text(right_node)}'"
        literal = _int_literal(whole_text)
        if literal is not None:
            self._add(
                f"{expression} mixes the whole number {whole_text} with {decimal_text}, a "
                f"decimal number (numbers from the data and the parameters are decimals); "
                f"write the number as a decimal: {literal}.0"
            )
        elif _int_literal(decimal_text.removesuffix(".0")) is not None and decimal_text.endswith(
            ".0"
        ):
            self._add(
                f"{expression} mixes {whole_text}, a whole number, with the decimal "
                f"{decimal_text}; write it as a whole number: {decimal_text.removesuffix('.0')}"
            )
        else:
            self._add(
                f"{expression} mixes {whole_text}, a whole number, with {decimal_text}, a "
                f"decimal number; convert one of them: double({whole_text})"
            )

    def _t_unary(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        children = self._children(node)
        if len(children) == 1:
            return self._type(children[0], env)
        operand = self._type(children[1], env)
        return BOOL if children[0].data == "unary_not" else operand

    def _t_member(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        return self._type(self._children(node)[0], env)

    def _t_primary(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        return self._type(self._children(node)[0], env)

    def _t_paren_expr(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        return self._type(self._children(node)[0], env)

    def _t_ident(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        return env.get(str(node.children[0]), UNKNOWN)  # unknown names: reported by the loader

    def _t_literal(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        token = node.children[0]
        assert isinstance(token, Token)
        return {
            "INT_LIT": INT,
            "UINT_LIT": UINT,
            "FLOAT_LIT": DOUBLE,
            "STRING_LIT": STRING,
            "MLSTRING_LIT": STRING,
            "BYTES_LIT": BYTES,
            "BOOL_LIT": BOOL,
            "NULL_LIT": NULL,
        }.get(token.type, UNKNOWN)

    def _t_list_lit(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        element: CelType = Nothing()
        for item in self._items(node):
            element = _unify(element, self._type(item, env))
        return ListOf(element)

    def _t_map_lit(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        items = self._items(node)
        keys: set[str] | None = set()
        value: CelType = Nothing()
        for index, item in enumerate(items):
            item_type = self._type(item, env)
            if index % 2 == 0:
                literal = _string_literal(self._text(item))
                if literal is None or keys is None:
                    keys = None
                else:
                    keys.add(literal)
            else:
                value = _unify(value, item_type)
        return MapOf(
            UNKNOWN if isinstance(value, Nothing) else value,
            frozenset(keys) if keys is not None else None,
            name="a map written in the rules",
        )

    def _items(self, node: Tree[Token]) -> list[Tree[Token]]:
        """The expressions of an exprlist or mapinits child, if any."""
        found: list[Tree[Token]] = []
        for child in self._children(node):
            if child.data in ("exprlist", "mapinits"):
                found.extend(self._children(child))
        return found

    def _t_ident_arg(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        name = str(node.children[0])
        for arg in self._items(node):
            self._type(arg, env)  # has(x.f) is checked as x.f: every record has all its fields
        return BOOL if name == "has" else _FUNCTIONS.get(name, UNKNOWN)

    def _t_member_dot(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        target_node, name_token = node.children[0], node.children[1]
        assert isinstance(target_node, Tree)
        target = self._type(target_node, env)
        return self._field(target, str(name_token), self._text(target_node))

    def _field(self, target: CelType, name: str, target_text: str) -> CelType:
        if isinstance(target, Record):
            found = target.fields.get(name)
            if found is None:
                if target.quiet:
                    return UNKNOWN
                fields = ", ".join(sorted(target.fields))
                self._add(
                    f"unknown field '{name}' of {target.describe()} ('{target_text}.{name}')"
                    f"{_closest(name, target.fields)}; its fields: {fields}"
                )
                return UNKNOWN
            return found
        if isinstance(target, MapOf):
            if target.keys is not None and name not in target.keys:
                self._add(
                    f"unknown key '{name}' of {target.name} ('{target_text}.{name}')"
                    f"{_closest(name, target.keys)}; its keys: {', '.join(sorted(target.keys))}"
                )
                return UNKNOWN
            return target.value
        if isinstance(target, ListOf | Scalar) and target not in (NULL,):
            self._add(
                f"'{target_text}.{name}' reads a field of {describe(target)}"
                + (
                    ": take one record (an index, or a comprehension such as "
                    f"{target_text}.exists(r, r.{name} ...))"
                    if isinstance(target, ListOf) and isinstance(target.element, Record)
                    else ""
                )
            )
            return UNKNOWN
        return UNKNOWN

    def _t_member_index(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        target_node, index_node = self._children(node)
        target = self._type(target_node, env)
        index = self._type(index_node, env)
        if isinstance(target, ListOf):
            return UNKNOWN if isinstance(target.element, Nothing) else target.element
        literal = _string_literal(self._text(index_node)) if index == STRING else None
        if isinstance(target, Record | MapOf) and literal is not None:
            return self._field(target, literal, self._text(target_node))
        if isinstance(target, MapOf):
            return target.value
        return UNKNOWN

    def _t_member_dot_arg(self, node: Tree[Token], env: Mapping[str, CelType]) -> CelType:
        target_node = node.children[0]
        assert isinstance(target_node, Tree)
        method = str(node.children[1])
        args = self._items(node)
        target = self._type(target_node, env)
        if method in _MACROS and args and _is_ident(args[0]):
            return self._macro(method, target, args, env)
        for arg in args:
            self._type(arg, env)
        if method in _STRING_METHODS:
            return _STRING_METHODS[method]
        if method == "size":
            return INT
        return UNKNOWN

    def _macro(
        self, method: str, target: CelType, args: list[Tree[Token]], env: Mapping[str, CelType]
    ) -> CelType:
        variable = self._text(args[0])
        if isinstance(target, ListOf):
            element = UNKNOWN if isinstance(target.element, Nothing) else target.element
        elif isinstance(target, MapOf):
            element = STRING if target.keys is not None else UNKNOWN  # a map's keys
        else:
            element = UNKNOWN
        inner = {**env, variable: element}
        bodies = [self._type(arg, inner) for arg in args[1:]]
        if method in ("all", "exists", "exists_one"):
            return BOOL
        if method == "filter":
            return target if isinstance(target, ListOf) else UNKNOWN
        # map(v, e) or map(v, p, e): a list of e
        return ListOf(bodies[-1]) if bodies else UNKNOWN


def _is_ident(node: Tree[Token]) -> bool:
    """Whether an argument is a bare name (a comprehension's variable)."""
    while isinstance(node, Tree):
        children = [c for c in node.children if isinstance(c, Tree)]
        if node.data == "ident":
            return True
        if len(children) != 1 or len(node.children) != 1:
            return False
        node = children[0]
    return False


def _int_literal(text: str) -> str | None:
    stripped = text.strip()
    digits = stripped.removeprefix("-")
    return stripped if digits.isdigit() else None


def _string_literal(text: str) -> str | None:
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "\"'":
        inner = stripped[1:-1]
        return None if "\\" in inner else inner
    return None


def _closest(name: str, known: Iterable[str]) -> str:
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""
