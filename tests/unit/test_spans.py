"""Spans of a file read with the blocks, lines and counts of one whole reading."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import ndjson_files
from service.ndjson_files import NdjsonFile
from service.screening.partition import bucket_of, plan_spans

BLOCK = 64  # bytes: small blocks, so short generated files cut into many spans


LIMIT = 100  # bytes: lines longer than this (line end included) are skipped

Block = tuple[bytes, bool]


def whole_blocks(path: Path) -> list[Block]:
    with path.open("rb") as handle:
        return [(bytes(b[:end]), skip) for b, end, skip in ndjson_files.blocks(handle, LIMIT)]


def span_blocks(path: Path, every: int) -> list[Block]:
    found = []
    for span in plan_spans([NdjsonFile(path, "Observation")], every):
        with path.open("rb") as handle:
            if span.bounds is None:
                blocks = ndjson_files.blocks(handle, LIMIT)
            else:
                blocks = ndjson_files.span_blocks(handle, *span.bounds, LIMIT)
            found += [(bytes(block[:end]), skipped) for block, end, skipped in blocks]
    return found


lines = st.lists(
    st.one_of(
        st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
        # some longer than a block, some longer than the limit
        st.integers(0, 300).map(lambda n: b"{" + b"x" * n + b"}"),
        st.just(b""),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=lines,
    bom=st.booleans(),
    final_newline=st.booleans(),
    crlf=st.booleans(),
    every=st.sampled_from([BLOCK, 2 * BLOCK, 3 * BLOCK]),
)
def test_spans_give_the_blocks_of_one_reading(
    lines: list[bytes], bom: bool, final_newline: bool, crlf: bool, every: int
) -> None:
    text = (b"\r\n" if crlf else b"\n").join(lines) + (b"\n" if final_newline else b"")
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        patch.setattr(ndjson_files, "BLOCK_BYTES", BLOCK)
        path = Path(folder) / "Observation.ndjson"
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text)
        assert span_blocks(path, every) == whole_blocks(path)


def naive_lines(content: bytes, limit: int) -> list[bytes | None]:
    """Every line, None for one of more than ``limit`` bytes with its line end."""
    content = content.removeprefix(b"\xef\xbb\xbf")
    parts = content.split(b"\n")
    ends = [True] * (len(parts) - 1) + [False]
    if parts[-1] == b"":
        parts, ends = parts[:-1], ends[:-1]
    return [None if len(p) + e > limit else p for p, e in zip(parts, ends, strict=True)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=lines, bom=st.booleans(), final_newline=st.booleans(), crlf=st.booleans())
def test_a_line_too_long_is_skipped_and_numbered_and_every_other_line_read(
    lines: list[bytes], bom: bool, final_newline: bool, crlf: bool
) -> None:
    text = (b"\r\n" if crlf else b"\n").join(lines) + (b"\n" if final_newline else b"")
    content = (b"\xef\xbb\xbf" if bom else b"") + text
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ndjson_files, "BLOCK_BYTES", BLOCK)
        found = list(ndjson_files.numbered_lines(io.BytesIO(content), LIMIT))
    expected = naive_lines(content, LIMIT)
    assert [line for _, line in found] == expected
    assert [number for number, _ in found] == list(range(1, len(expected) + 1))


def test_the_limit_counts_the_line_end() -> None:
    """A line of exactly the limit with its line end is read; one byte more is not."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ndjson_files, "BLOCK_BYTES", BLOCK)
        fits, over = b"x" * (LIMIT - 1), b"y" * LIMIT
        content = fits + b"\n" + over + b"\n" + over  # the last one without a line end fits
        found = list(ndjson_files.numbered_lines(io.BytesIO(content), LIMIT))
    assert found == [(1, fits), (2, None), (3, over)]


def test_a_big_file_is_cut_between_lines_and_a_gzipped_one_is_not(tmp_path: Path) -> None:
    plain = tmp_path / "Observation.ndjson"
    plain.write_bytes(b"".join(b'{"n":%d}\n' % n for n in range(400_000)))  # about 4.3 MB
    spans = plan_spans([NdjsonFile(plain, "Observation")], ndjson_files.BLOCK_BYTES)
    assert len(spans) == 2 and spans[0].bounds is not None and spans[1].bounds is not None
    (_, cut), (start, end) = spans[0].bounds, spans[1].bounds
    assert cut == start and end == plain.stat().st_size
    assert plain.read_bytes()[cut - 1 : cut] == b"\n"
    packed = tmp_path / "Condition.ndjson.gz"
    packed.write_bytes(b"\x1f\x8b" + bytes(6_000_000))
    (whole,) = plan_spans([NdjsonFile(packed, "Condition")], ndjson_files.BLOCK_BYTES)
    assert whole.bounds is None


def test_a_patient_has_the_same_bucket_in_every_process() -> None:
    # hash() of a string is salted per process; workers and the parent must agree.
    ids = [f"patient-{n}" for n in range(50)]
    code = "from service.screening.partition import bucket_of; import sys; " + (
        "print([bucket_of(p, 7) for p in sys.argv[1:]])"
    )
    here = str([bucket_of(p, 7) for p in ids])
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", code, *ids], env=env, capture_output=True, text=True, check=True
        )
        assert done.stdout.strip() == here
    assert len({bucket_of(p, 7) for p in ids}) == 7  # and the patients spread over them all
