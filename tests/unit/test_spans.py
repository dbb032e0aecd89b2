"""Spans of a file read with the blocks, lines and counts of one whole reading."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.ndjson_files import NdjsonFile
from service.screening import lines as ndjson_lines
from service.screening.partition import bucket_of, plan_spans

BLOCK = 64  # bytes: small blocks, so short generated files cut into many spans


def whole_blocks(path: Path) -> list[bytes]:
    with path.open("rb") as handle:
        return [bytes(block[:end]) for block, end in ndjson_lines.blocks(handle)]


def span_blocks(path: Path, every: int) -> list[bytes]:
    found = []
    for span in plan_spans([NdjsonFile(path, "Observation")], every):
        with path.open("rb") as handle:
            if span.bounds is None:
                found += [bytes(block[:end]) for block, end in ndjson_lines.blocks(handle)]
            else:
                blocks = ndjson_lines.span_blocks(handle, *span.bounds)
                found += [bytes(block[:end]) for block, end in blocks]
    return found


lines = st.lists(
    st.one_of(
        st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
        st.integers(0, 300).map(lambda n: b"{" + b"x" * n + b"}"),  # some longer than a block
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
        patch.setattr(ndjson_lines, "BLOCK_BYTES", BLOCK)
        path = Path(folder) / "Observation.ndjson"
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text)
        assert span_blocks(path, every) == whole_blocks(path)


def test_a_big_file_is_cut_between_lines_and_a_gzipped_one_is_not(tmp_path: Path) -> None:
    plain = tmp_path / "Observation.ndjson"
    plain.write_bytes(b"".join(b'{"n":%d}\n' % n for n in range(400_000)))  # about 4.3 MB
    spans = plan_spans([NdjsonFile(plain, "Observation")], ndjson_lines.BLOCK_BYTES)
    assert len(spans) == 2 and spans[0].bounds is not None and spans[1].bounds is not None
    (_, cut), (start, end) = spans[0].bounds, spans[1].bounds
    assert cut == start and end == plain.stat().st_size
    assert plain.read_bytes()[cut - 1 : cut] == b"\n"
    packed = tmp_path / "Condition.ndjson.gz"
    packed.write_bytes(b"\x1f\x8b" + bytes(6_000_000))
    (whole,) = plan_spans([NdjsonFile(packed, "Condition")], ndjson_lines.BLOCK_BYTES)
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
