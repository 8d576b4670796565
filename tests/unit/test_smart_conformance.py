"""docs/smart-conformance.md: every SHALL/SHOULD row names at least one test, and every named test exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "docs" / "smart-conformance.md"
REQUIRED_PAGES = ("app-launch", "scopes-and-launch-context", "client-confidential-asymmetric", "backend-services")


def rows() -> list[dict[str, str]]:
    out = []
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.match(r"^[A-Z]{2}-\d{2}$", cells[0]):
            out.append(dict(zip(("id", "section", "level", "requirement", "tests"), cells, strict=True)))
    return out


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def missing_tests() -> list[str]:
    problems = []
    for row in rows():
        refs = [r.strip() for r in row["tests"].split(",") if r.strip()]
        if not refs:
            problems.append(f"{row['id']} names no test")
        for ref in refs:
            path, _, name = ref.partition("::")
            file = ROOT / path
            if not file.exists() or name not in defined_tests(file):
                problems.append(f"{row['id']}: {ref} does not exist")
    return problems


def test_every_requirement_has_an_existing_test() -> None:
    assert rows(), "the table has rows"
    assert missing_tests() == []


def test_ids_are_unique_and_levels_are_spec_words() -> None:
    ids = [r["id"] for r in rows()]
    assert len(ids) == len(set(ids))
    assert {r["level"] for r in rows()} <= {"SHALL", "SHALL NOT", "SHOULD", "SHOULD NOT"}


def test_all_four_pages_are_covered() -> None:
    pages = {r["section"].split("#")[0] for r in rows()}
    assert set(REQUIRED_PAGES) <= pages, set(REQUIRED_PAGES) - pages
