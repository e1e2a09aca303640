"""ARCHITECTURE.md stays true: every module it names exists; layering rules hold."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_named_module_exists():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`(robaudit/[\w/]+\.py)`", text))
    assert len(named) >= 15
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"ARCHITECTURE.md names missing modules: {missing}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_layering():
    pkg = ROOT / "robaudit"
    # below the CLI nothing imports robaudit.cli
    for path in pkg.rglob("*.py"):
        if "cli" in path.relative_to(pkg).parts or path.name == "__main__.py":
            continue
        bad = [m for m in _imports(path) if m.startswith("robaudit.cli")]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
    # the gate is pure: no analyses registry; report/build does not import the audit engine
    assert not any(m.startswith("robaudit.analyses") for m in _imports(pkg / "gate.py"))
    assert "robaudit.engine" not in _imports(pkg / "report" / "build.py")
    # analyses do not import the terminal reporter (which imports the analyses)
    for path in (pkg / "analyses").glob("*.py"):
        assert "robaudit.report.terminal" not in _imports(path), path.name
