"""The two block scanners (Hyperscan and ``re``) give the same answers, and the right ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.ruleset.loader import RuleSet
from service.screening.blockscan import (
    HyperscanBlockScanner,
    RegexBlockScanner,
    block_scanner,
)
from tests.conftest import SAMPLE_DIR
from tests.helpers import screen_cli

# Real lines of the sample hospital and the damage exports show, as building blocks.
_SAMPLE_CONDITIONS = (SAMPLE_DIR / "Condition.ndjson").read_bytes().splitlines()[:40]
_PIECES = st.one_of(
    st.sampled_from(_SAMPLE_CONDITIONS),
    st.sampled_from(
        [
            b'{"resourceType":"Condition","code":{"coding":[{"code":"C79.51"}]}}',
            b'{"code" : " C7951 ","x":{"code":"C79.52"}}',  # spaced, and two codes on a line
            b'{"code":"C79.5"}',  # a prefix of a listed code is no match
            b'{"code":"XC79.51"}',
            b'{"note":"code C79.51"}',
            b"",  # blank line
            b'{"code":"C79.51"}\r',  # CRLF
            b"[1, 2]",
            b'{"cut": "C79.51',
            b"  {}  ",
            b"{",
            b"}",
            '{"text":"Rückenschmerz"}'.encode(),
        ]
    ),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
)


def reference(pattern: re.Pattern[bytes], block: bytes) -> tuple[list[int], bool]:
    """What a scanner must answer, line by line in plain Python."""
    body = block[:-1] if block.endswith(b"\n") else block
    starts: list[int] = []
    objects = True
    offset = 0
    for line in body.split(b"\n"):
        if pattern.search(line):
            starts.append(offset)
        objects = objects and line[:1] == b"{" and line[-1:] == b"}"
        offset += len(line) + 1
    return starts, objects


@pytest.fixture(scope="module")
def condition_pattern(relieve: RuleSet) -> re.Pattern[bytes]:
    pattern = relieve.mapper.prefilters["Condition"]
    assert pattern is not None
    return pattern


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, min_size=1, max_size=15), st.booleans())
def test_both_scanners_answer_like_reading_line_by_line(
    condition_pattern: re.Pattern[bytes], lines: list[bytes], trailing_newline: bool
) -> None:
    block = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    if not block:
        return
    buffer = bytearray(block) + bytearray(b"garbage after the end\n{")  # never looked at
    count = block.count(b"\n") + (not block.endswith(b"\n"))
    expected = reference(condition_pattern, block)
    assert RegexBlockScanner(condition_pattern).scan(buffer, len(block), count) == expected
    assert HyperscanBlockScanner(condition_pattern).scan(buffer, len(block), count) == expected


def test_hyperscan_is_used_unless_re_is_asked_for(
    condition_pattern: re.Pattern[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(block_scanner(condition_pattern), HyperscanBlockScanner)
    monkeypatch.setenv("PRESCREEN_BLOCK_SCANNER", "re")
    assert isinstance(block_scanner(condition_pattern), RegexBlockScanner)


def test_a_pattern_hyperscan_refuses_falls_back_to_re() -> None:
    # A back-reference: Python's re takes it, Hyperscan does not.
    pattern = re.compile(rb'"code":"(a)\1"')
    scanner = block_scanner(pattern)
    assert isinstance(scanner, RegexBlockScanner)
    block = bytearray(b'{"code":"aa"}\n{"code":"ab"}\n')
    assert scanner.scan(block, len(block), 2) == ([0], True)


def test_a_damaged_population_gives_the_same_outputs_with_either_scanner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "damaged"
    source.mkdir()
    for path in SAMPLE_DIR.glob("*.ndjson"):
        lines = path.read_bytes().splitlines()
        # Blank lines, a CRLF, a non-object and a cut line among real ones, in every file long
        # enough to hold them (the clinic's few Locations and Practitioners are copied whole).
        if len(lines) >= 8:
            lines[3:3] = [b"", lines[5] + b"\r", b"[]", lines[7][:30]]
        (source / path.name).write_bytes(b"\n".join(lines) + b"\n")
    outputs = {}
    for scanner in ("hyperscan", "re"):
        monkeypatch.setenv("PRESCREEN_BLOCK_SCANNER", scanner)
        out = tmp_path / scanner
        assert screen_cli("--source", str(source), out) == 1  # the damage is reported
        outputs[scanner] = {
            p.name: p.read_bytes() for p in out.iterdir() if p.name != "summary.json"
        }
    assert outputs["hyperscan"] == outputs["re"]
    assert b"malformed-json" in outputs["re"]["issues.ndjson"]
