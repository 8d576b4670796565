"""Who may import whom (STYLE.md): a wrong arrow between our packages fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = {"prm", "fhir_mappings", "connector", "smart_app", "workers", "ehr_sandbox"}
ALLOWED: dict[str, set[str]] = {
    "prm": set(),
    "fhir_mappings": {"prm"},
    "connector": {"prm.config", "prm.errors", "prm.fhir_names", "prm.smart_scopes"},
    "workers": {"prm", "connector", "fhir_mappings"},
    "smart_app": {"prm", "connector", "fhir_mappings", "workers"},
    "ehr_sandbox": {"prm", "connector", "fhir_mappings", "smart_app", "workers"},
}


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def allowed(package: str, module: str) -> bool:
    top = module.split(".")[0]
    if top not in OURS or top == package:
        return True
    return any(module == rule or module.startswith(rule + ".") or rule == top for rule in ALLOWED[package])


def violations() -> list[str]:
    wrong = []
    for package in OURS:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "data" in path.relative_to(ROOT / package).parts:
                continue
            for module in imports_of(path):
                if not allowed(package, module):
                    wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    return wrong


def test_no_forbidden_imports() -> None:
    assert violations() == []


def test_product_packages_never_import_the_sandbox() -> None:
    for package in OURS - {"ehr_sandbox"}:
        for path in (ROOT / package).rglob("*.py"):
            assert not any(m.split(".")[0] == "ehr_sandbox" for m in imports_of(path)), path


def test_the_checker_catches_a_wrong_arrow() -> None:
    assert not allowed("prm", "smart_app.app")
    assert not allowed("connector", "prm.models")
    assert allowed("connector", "prm.errors")
    assert not allowed("workers", "smart_app.cli")
