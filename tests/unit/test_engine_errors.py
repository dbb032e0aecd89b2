"""What counts as an expression's failure on the engines, and what does not."""

from __future__ import annotations

import _thread
import signal
from types import FrameType

import pytest

from service.ruleset.engines import CelEvaluationError, RustCelEngine


def test_an_exception_a_signal_handler_raises_during_a_program_is_not_the_rules_fault() -> None:
    # A handler left behind by a stopped SparkContext raised this on Ctrl-C; the Rust engine
    # turned it into "fails on a sample patient (cel): AttributeError: 'NoneType' object has no
    # attribute 'sc'", a rule problem reported against rules/ssrs.yaml. The signal arrives while
    # the program runs: the expression calls the interpreter's own interrupt (a C function, so
    # the handler runs as the program returns, exactly as for a real Ctrl-C during a run).
    def stale_handler(signum: int, frame: FrameType | None) -> None:
        raise AttributeError("'NoneType' object has no attribute 'sc'")

    engine = RustCelEngine()
    activation = engine.activation({"levels": [1.0, 2.0]})
    activation.context.add_function("interrupt", _thread.interrupt_main)  # type: ignore[attr-defined]
    program = engine.compile("interrupt() == null && levels.exists(n, n > 1.0)")
    previous = signal.signal(signal.SIGINT, stale_handler)
    try:
        with pytest.raises(AttributeError, match="'sc'"):
            program.run(activation)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_what_the_rust_engine_raises_for_a_failing_expression_is_an_evaluation_error() -> None:
    engine = RustCelEngine()
    activation = engine.activation({"scores": [], "record": {"score": 5.0}, "big": 2**62})
    for source in ("scores[0]", "record.scroe", "1 / 0", "1 + 'a'", "unknown_name", "big * 4"):
        with pytest.raises(CelEvaluationError):
            engine.compile(source).run(activation)
