"""Structure rules of docs/interfaces.md, checked on the source tree (no imports are executed).

- no import cycle between the subpackages of ``metis`` (``metis/<pkg>/`` or a top-level
  ``metis/<module>.py``), counting imports inside functions too;
- ``metis/rl`` imports no other layer than ``metis.utils`` (pure math);
- no module under ``metis/`` is longer than 450 lines;
- nothing in the repository cites documents that are not part of it.
"""

from __future__ import annotations

import ast
import subprocess
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "metis"
MAX_LINES = 450


def _unit(path: Path) -> str:
    """The layer a file belongs to: ``metis/<pkg>/...`` -> pkg, ``metis/<mod>.py`` -> mod."""
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_units(path: Path) -> dict[str, int]:
    """metis layers imported anywhere in the file (module level or inside functions) -> line."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    is_pkg = path.name == "__init__.py"
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                names = [".".join(base + ([node.module] if node.module else []))]
            elif node.module:
                names = [node.module]
            if names and names[0] == "metis":  # from metis import x: x is the layer
                names = [f"metis.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "metis" and len(parts) > 1:
                found.setdefault(parts[1], node.lineno)
    return found


def _graph() -> dict[str, dict[str, str]]:
    """layer -> {imported layer: "file:line" of one such import}."""
    edges: dict[str, dict[str, str]] = defaultdict(dict)
    for path in sorted(PKG.rglob("*.py")):
        src = _unit(path)
        for dst, line in _imported_units(path).items():
            if dst != src:
                edges[src].setdefault(dst, f"{path.relative_to(ROOT)}:{line}")
    return edges


def _find_cycle(edges: dict[str, dict[str, str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, {})):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_scanner_finds_cycles_and_function_level_imports():
    assert _unit(PKG / "agent" / "loop.py") == "agent" and _unit(PKG / "train.py") == "train"
    edges = {"a": {"b": "x"}, "b": {"c": "y"}, "c": {"a": "z"}}
    assert _find_cycle(edges) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b": "x"}, "b": {}}) is None
    # imports inside functions count: metis/curation/policy.py imports the agent loop lazily
    assert "agent" in _imported_units(PKG / "curation" / "policy.py")


def test_no_import_cycle_between_layers():
    edges = _graph()
    cycle = _find_cycle(edges)
    if cycle:
        where = ", ".join(f"{a} -> {b} ({edges[a][b]})" for a, b in zip(cycle, cycle[1:]))
        raise AssertionError(f"import cycle between metis layers: {where}")


def test_rl_is_pure_math():
    allowed = {"utils"}
    edges = _graph()
    extra = {k: v for k, v in edges.get("rl", {}).items() if k not in allowed}
    assert not extra, f"metis/rl imports other layers: {extra}"
    assert not edges.get("core"), f"metis/core must import no other layer: {edges.get('core')}"


def test_no_module_over_the_line_limit():
    long = {str(p.relative_to(ROOT)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them): {long}"


def test_no_citation_of_documents_outside_the_repository():
    banned = ("REFERENCE" + ".md", "CPU" + "-STACK", "ARCHITECTURE" + ".md", "../" + "shared")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    hits = []
    for name in files:
        path = ROOT / name
        if not path.is_file() or path.suffix in {".png", ".jpg", ".parquet", ".pt", ".safetensors"}:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if any(b in line for b in banned):
                hits.append(f"{name}:{i}")
    assert not hits, "cites a document that is not in the repository (write it into docs/): " + ", ".join(hits)
