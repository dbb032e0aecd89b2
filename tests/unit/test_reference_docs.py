"""docs/reference/ is what the schemas of the data files say, key for key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from service.mapping.spec import MappingDoc
from service.ruleset.model import RuleSetDoc
from service.screening import reference
from service.screening.ruletests import RuleTestFile


def test_the_reference_in_docs_is_what_the_schemas_give() -> None:
    assert reference.stale() == [], (
        "docs/reference/ is stale: run `python -m service.screening.reference`"
    )


def test_every_key_of_every_schema_is_in_the_reference() -> None:
    for model in (MappingDoc, RuleSetDoc, RuleTestFile):
        page = next(p for p in reference.PAGES if p.model is model)
        text = reference.render(page)
        for row in reference.rows(model):
            assert f"| `{row.key}` |" in text


def test_a_stale_page_is_found(tmp_path: Path) -> None:
    shutil.copytree(reference.DOCS_DIR, tmp_path, dirs_exist_ok=True)
    page = tmp_path / "rule-files.md"
    page.write_text(page.read_text().replace("`criteria[].note`", "`criteria[].notes`"))
    assert reference.stale(tmp_path) == ["rule-files.md"]


def test_a_key_without_a_meaning_or_an_example_stops_the_reference() -> None:
    class Undocumented(BaseModel):
        threshold: float

    with pytest.raises(reference.ReferenceError, match="has no description"):
        list(reference.rows(Undocumented))

    class WithoutExample(BaseModel):
        threshold: float = Field(description="a threshold")

    with pytest.raises(reference.ReferenceError, match="has no example"):
        list(reference.rows(WithoutExample))
