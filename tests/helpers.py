"""Small helpers the test modules share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.cli import main

AS_OF = "2026-06-15"


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def screen_cli(where: str, value: str, out: Path, *extra: str) -> int:
    """``prescreen screen`` for RELIEVE as of AS_OF; ``where`` is --source or --fhir-url."""
    command = ["screen", "--trial", "relieve", where, value, "--as-of", AS_OF]
    return main([*command, "--out", str(out), "--no-progress", *extra])
