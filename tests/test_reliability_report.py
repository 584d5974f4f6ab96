"""RELIABILITY.md and docs/failure-modes.md stay true to the tree: every test they cite exists,
and every catalogued failure mode has a row of tests."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "RELIABILITY.md"
CATALOGUE = ROOT / "docs" / "failure-modes.md"
CITATION = re.compile(r"(tests/test_\w+\.py)::(test_\w+)")


def test_every_cited_test_exists() -> None:
    cited = set(CITATION.findall(REPORT.read_text() + CATALOGUE.read_text()))
    assert len(cited) > 60
    missing = [
        f"{path}::{name}"
        for path, name in sorted(cited)
        if not re.search(rf"^(async )?def {name}\(", (ROOT / path).read_text(), re.MULTILINE)
    ]
    assert not missing, missing


def test_every_failure_mode_has_a_row_with_a_test() -> None:
    text = CATALOGUE.read_text()
    entries = {int(n) for n in re.findall(r"^(\d+)\. \*\*", text, re.MULTILINE)}
    rows = {
        int(match[1]): match[2]
        for match in re.finditer(r"^\| (\d+) \|[^|]*\|(.*)\|$", text, re.MULTILINE)
    }
    assert entries == set(range(1, 23))
    assert sorted(rows) == sorted(entries)
    assert all(CITATION.search(tests) for tests in rows.values())


def test_nothing_cites_a_document_outside_the_repository() -> None:
    outside = re.compile(r"\.\./shared|PITFALLS|DESIGN\.md")
    patterns = ("*.md", "docs/*.md", "agentspace_grpc/**/*.py", "tests/*.py", "examples/*.py")
    offenders = [
        str(path.relative_to(ROOT))
        for pattern in patterns
        for path in ROOT.glob(pattern)
        if path.name != Path(__file__).name and outside.search(path.read_text())
    ]
    assert not offenders, offenders
