"""The server's modules import one another without cycles (counting imports inside functions and under
TYPE_CHECKING): each shared piece lives in the module it belongs to."""

from __future__ import annotations

import ast
from pathlib import Path

import jaxllm

ROOT = Path(jaxllm.__file__).parent
PACKAGES = ("jaxllm.entrypoints", "jaxllm.engine")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if not name.startswith(PACKAGES):
            continue
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            deps |= {t for t in targets if t in modules and t.startswith(PACKAGES) and t != name}
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_graph_sees_the_server_modules():
    graph = _import_graph()
    assert "jaxllm.entrypoints.openai.api_server" in graph["jaxllm.entrypoints.cli"]
    assert "jaxllm.engine.request_stream" in graph["jaxllm.engine.async_engine"]


def test_no_import_cycles_in_the_engine_and_entrypoints():
    assert _cycles(_import_graph()) == []
