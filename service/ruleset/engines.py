"""Two CEL engines behind one interface.

``cel`` (common-expression-language, Rust) is the default: fast and thread-safe.
``celpy`` (cel-python, pure Python, InterpretedRunner) is the reference implementation the
project was specified with. Rule tests run on both and must agree.

The expensive step on both engines is converting the patient's facts into CEL values, so an
``Activation`` converts them once per patient and every program of the rule set runs against it.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal, Protocol

from service.errors import ConfigError

EngineName = Literal["cel", "celpy"]
ENGINE_NAMES: tuple[EngineName, ...] = ("cel", "celpy")

# Comprehension macros bind a variable name; cel's static analysis reports it as a variable.
_MACRO_BINDING = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")


class CelSyntaxError(ValueError):
    """An expression that does not parse."""


class CelEvaluationError(RuntimeError):
    """An expression that failed at run time (type mismatch, missing field...)."""


class Activation(Protocol):
    def bind(self, name: str, value: Any) -> None: ...

    def bind_all(self, values: dict[str, Any]) -> None: ...

    def for_patient(self, values: dict[str, Any]) -> Activation:
        """An activation with these (a patient's) values over this one's, which every patient
        shares. It may be this activation itself, rebound: then it is valid until the next
        call, and every call must bind the same names (or the previous patient's would show)."""
        ...


class Program(Protocol):
    source: str

    def run(self, activation: Any) -> Any: ...


class Engine(Protocol):
    name: EngineName

    def compile(self, source: str) -> Program: ...

    def activation(self, variables: dict[str, Any]) -> Activation: ...

    def to_python(self, value: Any) -> Any: ...


def referenced_names(source: str) -> set[str]:
    """Top-level identifiers an expression reads, without comprehension variables."""
    import cel

    try:
        names = set(cel.compile(source).variables())
    except ValueError as exc:
        raise CelSyntaxError(str(exc)) from exc
    return names - set(_MACRO_BINDING.findall(source))


# --- cel (Rust) -------------------------------------------------------------------------------


class _RustActivation:
    __slots__ = ("_patient_names", "_shared", "context")

    def __init__(self, variables: dict[str, Any]) -> None:
        import cel

        self.context = cel.Context(variables)
        self._shared = variables
        self._patient_names: frozenset[str] | None = None

    def bind(self, name: str, value: Any) -> None:
        self.context.add_variable(name, value)

    def bind_all(self, values: dict[str, Any]) -> None:
        self.context.update(values)

    def for_patient(self, values: dict[str, Any]) -> Activation:
        """This activation, the patient's values bound over the previous patient's: a new
        Context would convert the shared values (parameters, tables) again for every patient,
        which is most of an evaluation's cost (SSRS: 0.5 ms of its tables a patient). Another
        set of names than the first patient's gets an activation of its own."""
        names = frozenset(values)
        if self._patient_names is None:
            self._patient_names = names
        elif names != self._patient_names:
            return _RustActivation({**self._shared, **values})
        self.context.update(values)
        return self


# What the binding raises for an expression that fails (a missing key or index, no overload, a
# division by zero, an overflow, an undefined name). Nothing else is the expression's fault: an
# exception a signal handler raises while a program runs (the Python handler runs as soon as the
# call returns) must stay what it is, not become "the rule fails".
_RUST_ERRORS = (LookupError, TypeError, ValueError, RuntimeError, ArithmeticError)


class _RustProgram:
    __slots__ = ("_program", "source")

    def __init__(self, source: str) -> None:
        import cel

        self.source = source
        try:
            self._program = cel.compile(source)
        except ValueError as exc:
            raise CelSyntaxError(str(exc)) from exc

    def run(self, activation: Any) -> Any:
        try:
            return self._program.execute(activation.context)
        except _RUST_ERRORS as exc:
            raise CelEvaluationError(f"{type(exc).__name__}: {exc}") from exc


class RustCelEngine:
    name: EngineName = "cel"

    def compile(self, source: str) -> Program:
        return _RustProgram(source)

    def activation(self, variables: dict[str, Any]) -> Activation:
        return _RustActivation(variables)

    def to_python(self, value: Any) -> Any:
        return value


# --- celpy (pure Python) ----------------------------------------------------------------------


class _CelpyActivation:
    __slots__ = ("values",)

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def bind(self, name: str, value: Any) -> None:
        self.values[name] = value

    def bind_all(self, values: dict[str, Any]) -> None:
        self.values.update(values)

    def for_patient(self, values: dict[str, Any]) -> Activation:
        from celpy.adapter import json_to_cel

        return _CelpyActivation(
            {**self.values, **{name: json_to_cel(v) for name, v in values.items()}}
        )


class _CelpyProgram:
    __slots__ = ("_runner", "source")

    def __init__(self, environment: Any, source: str) -> None:
        from celpy.celparser import CELParseError

        self.source = source
        try:
            ast = environment.compile(source)
        except CELParseError as exc:
            raise CelSyntaxError(str(exc).splitlines()[0]) from exc
        self._runner = environment.program(ast)

    def run(self, activation: Any) -> Any:
        from celpy.evaluation import CELEvalError

        try:
            result = self._runner.evaluate(activation.values)
        except CELEvalError as exc:
            raise CelEvaluationError(str(exc.args[0] if exc.args else exc)) from exc
        if isinstance(result, CELEvalError):
            raise CelEvaluationError(str(result.args[0] if result.args else result))
        return result


class CelpyEngine:
    name: EngineName = "celpy"

    def __init__(self) -> None:
        import celpy

        # celpy logs every evaluation step at DEBUG and some at INFO; keep logs clean of facts.
        logging.getLogger("celpy").setLevel(logging.WARNING)
        self._environment = celpy.Environment(runner_class=celpy.InterpretedRunner)

    def compile(self, source: str) -> Program:
        return _CelpyProgram(self._environment, source)

    def activation(self, variables: dict[str, Any]) -> Activation:
        from celpy.adapter import json_to_cel

        return _CelpyActivation({name: json_to_cel(v) for name, v in variables.items()})

    def to_python(self, value: Any) -> Any:
        from celpy import celtypes

        if isinstance(value, celtypes.BoolType):
            return bool(value)
        if isinstance(value, celtypes.IntType | celtypes.UintType):
            return int(value)
        if isinstance(value, celtypes.DoubleType):
            return float(value)
        if isinstance(value, celtypes.StringType):
            return str(value)
        if isinstance(value, dict):
            return {self.to_python(k): self.to_python(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.to_python(v) for v in value]
        return value


_MIXED_NUMBERS = (
    re.compile(
        r"no matching overload .*IntType.*DoubleType|no matching overload .*DoubleType.*IntType"
    ),
    re.compile(r"Unsupported operation: (float \S+ int|int \S+ float)"),
)
_NO_MEMBER = re.compile(r"^(?:no such member in mapping: |KeyError: )'([^']*)'$")


def explain_failure(error: CelEvaluationError) -> str:
    """An engine's message in the words of the rules, with the engine's own kept after it."""
    text = str(error)
    if any(pattern.search(text) for pattern in _MIXED_NUMBERS):
        return (
            "a whole number mixed with a decimal one (numbers from the data and the parameters "
            f"are decimals): write the number as a decimal, 4.0 rather than 4 ({text})"
        )
    member = _NO_MEMBER.match(text)
    if member:
        return f"no field or key '{member.group(1)}' ({text})"
    if text == "invalid_argument" or text.startswith("IndexError: index out of bounds"):
        return (
            "an index past the end of a list, or another invalid argument: guard it, e.g. "
            f"size(x) > 0 before x[0] ({text})"
        )
    return text


def failure_summary(error: CelEvaluationError, source: str) -> str:
    """What made an expression fail, in words that quote the rule and never the data: the
    field or key it missed (when the expression names it), an index past the end, a whole
    number mixed with a decimal one; otherwise only the kind of error."""
    text = str(error)
    if any(pattern.search(text) for pattern in _MIXED_NUMBERS):
        return "a whole number mixed with a decimal one: write the number as a decimal (4.0)"
    member = _NO_MEMBER.match(text)
    if member:
        name = member.group(1)
        named = re.search(rf"\.\s*{re.escape(name)}\b|\[\s*[\"']{re.escape(name)}[\"']", source)
        return f"no field or key '{name}'" if named else "a field or key that is not there"
    if text == "invalid_argument" or text.startswith("IndexError"):
        return "an index past the end of a list (or another invalid argument)"
    if "divide by zero" in text or text.startswith("ZeroDivisionError"):
        return "a division by zero"
    kind = text.split(":", 1)[0] if re.match(r"^[A-Z]\w*Error:", text) else "an error"
    return f"the engine refused it ({kind})"


def make_engine(name: str) -> Engine:
    if name == "cel":
        return RustCelEngine()
    if name == "celpy":
        return CelpyEngine()
    raise ConfigError(f"unknown CEL engine '{name}' (choose one of: {', '.join(ENGINE_NAMES)})")
