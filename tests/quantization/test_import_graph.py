"""The quantization package's modules import one another without a cycle (top-level and deferred
imports alike), so each can be read, imported and tested on its own."""

from __future__ import annotations

import ast
import pathlib

import jaxllm.quantization

PACKAGE = "jaxllm.quantization"
ROOT = pathlib.Path(jaxllm.quantization.__file__).parent


def _imports(path: pathlib.Path) -> set[str]:
    """Sibling modules that `path` imports anywhere in its body (inside functions too)."""
    names = {p.stem for p in ROOT.glob("*.py")}
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PACKAGE:
                out |= {a.name for a in node.names if a.name in names}
            elif node.module.startswith(PACKAGE + "."):
                out.add(node.module[len(PACKAGE) + 1:].split(".")[0])
        elif isinstance(node, ast.Import):
            out |= {a.name[len(PACKAGE) + 1:].split(".")[0] for a in node.names if a.name.startswith(PACKAGE + ".")}
    return out - {path.stem}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_the_package():
    graph = {p.stem: _imports(p) for p in ROOT.glob("*.py") if p.stem != "__init__"}
    assert "awq_layout" in graph["weights"] and "weights" in graph["awq"]  # the graph is really read
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"
