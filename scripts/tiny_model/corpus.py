"""The training text: ``*.py`` files of the Python standard library, and chat examples built from them."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

from tiny_model.chat_format import chat_text

# Directories of the standard library that are left out: tests, third-party
# packages, the IDLE application, codec tables and generated data.
EXCLUDED_DIRS = {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idlelib",
    "encodings",
    "pydoc_data",
    "__pycache__",
    "ensurepip",
}


def collect_stdlib_files(stdlib_dir: Path) -> list[Path]:
    """Sorted relative paths of the ``*.py`` files used as corpus."""
    files = []
    for path in stdlib_dir.rglob("*.py"):
        rel = path.relative_to(stdlib_dir)
        dirs = rel.parts[:-1]
        if any(d in EXCLUDED_DIRS for d in dirs):
            continue
        if dirs and dirs[0].startswith("config-"):
            continue
        if rel.name.startswith("_sysconfigdata"):
            continue
        files.append(rel)
    return sorted(files, key=lambda p: p.as_posix())


def read_text(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None
    return text.replace("\r\n", "\n")


CHAT_SYSTEM_PROMPT = "You write Python code in the style of the standard library."


def chat_examples(source: str, max_lines: int = 12) -> list[str]:
    """Chat-formatted examples built from one module: the user asks for a
    function by the first line of its docstring, the assistant answers with
    the function's source. Gives the chat special tokens a trained meaning."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines()
    examples = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node)
        if not doc or node.name.startswith("_"):
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        end = node.end_lineno or node.lineno
        if end - start + 1 > max_lines:
            continue
        request = doc.strip().split("\n\n")[0].replace("\n", " ")
        request = " ".join(request.split())
        if len(request) < 10:
            continue
        code = textwrap.dedent("\n".join(lines[start - 1 : end]))
        messages = []
        if len(examples) % 2 == 0:
            messages.append({"role": "system", "content": CHAT_SYSTEM_PROMPT})
        messages.append({"role": "user", "content": f"Write a function `{node.name}`: {request}"})
        messages.append({"role": "assistant", "content": code})
        examples.append(chat_text(messages))
    return examples


def build_corpus(stdlib_dir: Path, heldout_every: int, chat_max_lines: int):
    files = collect_stdlib_files(stdlib_dir)
    train_docs, heldout_docs, train_files, heldout_files, skipped = [], [], [], [], []
    train_chat, heldout_chat = [], []
    for i, rel in enumerate(files):
        text = read_text(stdlib_dir / rel)
        if text is None or not text.strip():
            skipped.append(rel.as_posix())
            continue
        is_heldout = (i + 1) % heldout_every == 0
        (heldout_docs if is_heldout else train_docs).append(text)
        (heldout_files if is_heldout else train_files).append(rel.as_posix())
        if chat_max_lines > 0:
            (heldout_chat if is_heldout else train_chat).extend(chat_examples(text, chat_max_lines))
    return {
        "train_docs": train_docs,
        "heldout_docs": heldout_docs,
        "train_chat": train_chat,
        "heldout_chat": heldout_chat,
        "train_files": train_files,
        "heldout_files": heldout_files,
        "skipped": skipped,
    }
