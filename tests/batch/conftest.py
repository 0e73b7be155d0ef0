"""Fixtures for the batch tests: `jaxllm run-batch` in subprocesses, and a real server to compare with.

The batch runs use the server tests' engine shape and XLA compilation cache (tests/server/conftest.py),
so a batch job and a server compile the same programs once between them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.conftest import ENGINE_ARGS, SERVED_NAME, RemoteServer, xla_cache_dir  # noqa: F401

_SHAPE_FLAGS = ("--max-num-seqs", "--max-num-batched-tokens", "--num-gpu-blocks-override")
ENGINE_SHAPE = [x for flag in _SHAPE_FLAGS for x in (flag, ENGINE_ARGS[ENGINE_ARGS.index(flag) + 1])]
BATCH_MODULE = [sys.executable, "-m", "jaxllm.entrypoints.openai.run_batch"]
CLI = [sys.executable, "-m", "jaxllm.entrypoints.cli", "run-batch"]


def batch_env(xla_cache: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        HF_HUB_OFFLINE="1",
        JAX_COMPILATION_CACHE_DIR=xla_cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    return env


def batch_command(model: str, input_file: str, output_file: str, *extra: str, command=BATCH_MODULE) -> list[str]:
    return [*command, "-i", input_file, "-o", output_file, "--model", model, "--served-model-name", SERVED_NAME,
            *ENGINE_SHAPE, "--quiet", *extra]


def write_jsonl(path: Path, items: list) -> Path:
    """Items as lines: dicts are dumped as JSON, strings are written as they are."""
    path.write_text("".join((it if isinstance(it, str) else json.dumps(it)) + "\n" for it in items))
    return path


def read_records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def run_batch(tiny_model_dir, xla_cache_dir):  # noqa: F811
    """`run_batch(input, output, *flags, stdin=None, command=...)` -> CompletedProcess of a batch job."""

    def run(input_file: str, output_file: str, *extra: str, stdin: str | None = None, command=BATCH_MODULE,
            timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(batch_command(tiny_model_dir, input_file, output_file, *extra, command=command),
                              input=stdin, capture_output=True, text=True, timeout=timeout,
                              env=batch_env(xla_cache_dir))

    return run


@pytest.fixture(scope="module")
def batch_server(tiny_model_dir, xla_cache_dir, tmp_path_factory):  # noqa: F811
    """A real `jaxllm` server with the batch jobs' engine shape and served name."""
    server = RemoteServer(tiny_model_dir, ["--served-model-name", SERVED_NAME], xla_cache=xla_cache_dir,
                          log_dir=tmp_path_factory.mktemp("batch-server-logs"))
    yield server
    server.stop()
