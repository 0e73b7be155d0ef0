"""`pip install jaxllm` brings everything the package imports: `jaxllm serve` works without extras."""

from __future__ import annotations

import ast
import importlib.metadata
import pathlib
import re
import sys

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """The normalized distribution name of a requirement string ("uvicorn>=0.29" -> "uvicorn")."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)).lower()


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _third_party_imports(folder: pathlib.Path, skip: pathlib.Path | None = None) -> dict[str, str]:
    """Top-level module -> one file importing it, over every .py file under `folder` but not under `skip`."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        if skip is not None and path.is_relative_to(skip):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("jaxllm", "pallas_kernels"):
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _distributions(module: str) -> set[str]:
    dists = importlib.metadata.packages_distributions().get(module)
    assert dists, f"{module} is imported by jaxllm but no installed distribution provides it"
    return {_name(d) for d in dists}


def test_base_install_has_the_server():
    base = {_name(r) for r in _project()["dependencies"]}
    assert {"fastapi", "uvicorn", "pydantic", "prometheus-client", "starlette"} <= base


@pytest.mark.parametrize(
    ("folder", "extras"), [("jaxllm", ()), ("pallas_kernels", ()), ("jaxllm/langchain", ("langchain",))]
)
def test_every_import_is_a_declared_dependency(folder, extras):
    """Each third-party module the code imports comes from a base requirement (or, for jaxllm.langchain,
    from its extra): nothing works only because the test environment happens to have it."""
    project = _project()
    allowed = {_name(r) for r in project["dependencies"]}
    for extra in extras:
        allowed |= {_name(r) for r in project["optional-dependencies"][extra]}
    # The LangChain integration needs the `langchain` extra: it is checked on its own.
    imports = _third_party_imports(ROOT / folder, skip=None if extras else ROOT / "jaxllm" / "langchain")
    missing = {m: f for m, f in imports.items() if not _distributions(m) & allowed}
    assert not missing, f"imported but not in the install requirements: {missing}"


def test_serve_command_imports_with_base_packages(tmp_path):
    """The server's module tree imports (uvicorn, fastapi, prometheus_client...)."""
    import subprocess

    code = "import jaxllm.entrypoints.openai.api_server, uvicorn, fastapi, prometheus_client; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
