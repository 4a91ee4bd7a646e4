"""docs/security-tests.md stays honest: every test it names exists, every research item has its row, and every
module of this suite is in it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security-tests.md"
RESEARCH_ITEMS = 28
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")
ROW = re.compile(r"^\| (\d+) \|", re.MULTILINE)


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def test_every_test_the_table_names_exists_in_the_file_it_names() -> None:
    references = REFERENCE.findall(_text())
    assert len(references) > 100
    missing = [
        f"{path}::{name}"
        for path, name in references
        if not (ROOT / path).is_file()
        or not re.search(rf"^\s*(async )?def {name}\(", (ROOT / path).read_text(encoding="utf-8"), re.MULTILINE)
    ]
    assert missing == []


def test_every_research_item_has_one_row() -> None:
    assert [int(number) for number in ROW.findall(_text())] == list(range(1, RESEARCH_ITEMS + 1))


def test_every_module_of_the_security_suite_is_in_the_document() -> None:
    modules = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "tests" / "security").glob("test_*.py"))
    absent = [
        module for module in modules if module not in _text() and module != Path(__file__).relative_to(ROOT).as_posix()
    ]
    assert absent == []
