"""RELIABILITY.md stays true to the tree: every test it cites exists, every pitfall has a row."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "RELIABILITY.md"
CITATION = re.compile(r"(tests/test_\w+\.py)::(test_\w+)")


def test_every_cited_test_exists() -> None:
    text = REPORT.read_text()
    cited = set(CITATION.findall(text))
    assert len(cited) > 60
    missing = [
        f"{path}::{name}"
        for path, name in sorted(cited)
        if not re.search(rf"^(async )?def {name}\(", (ROOT / path).read_text(), re.MULTILINE)
    ]
    assert not missing, missing


def test_every_pitfall_has_a_row_with_a_test() -> None:
    rows = {
        int(match[1]): match[2]
        for match in re.finditer(r"^\| (\d+) \|[^|]*\|(.*)\|$", REPORT.read_text(), re.MULTILINE)
    }
    assert sorted(rows) == list(range(1, 23))
    assert all(CITATION.search(tests) for tests in rows.values())
