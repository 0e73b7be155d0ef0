"""Fixtures for the server tests: real `jaxllm` servers in subprocesses on free loopback ports.

Every server serves the tiny random Llama with the same engine shape (so they compile the same XLA
programs) and shares one persistent XLA compilation cache: the first server compiles a bucket, the
others load it. The cache lives in pytest's cache folder, so later runs start warm.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

SERVED_NAME = "tiny-llama"
# One engine shape for every test server: same buckets, same compiled programs.
ENGINE_ARGS = [
    "--max-num-seqs", "64",
    "--max-num-batched-tokens", "512",
    "--num-gpu-blocks-override", "1024",
    "--uvicorn-log-level", "warning",
    "--disable-log-stats",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RemoteServer:
    """A server process: `python -m jaxllm.entrypoints.openai.api_server` (or any command) on a free port."""

    def __init__(self, model: str, args: list[str], *, xla_cache: str, log_dir: Path, env: dict | None = None,
                 command: list[str] | None = None, startup_timeout: float = 240.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"server-{self.port}.log"
        full_env = dict(os.environ)
        full_env.pop("JAXLLM_API_KEY", None)
        full_env.pop("VLLM_API_KEY", None)
        full_env.update(
            JAX_PLATFORMS="cpu",
            HF_HUB_OFFLINE="1",
            JAX_COMPILATION_CACHE_DIR=xla_cache,
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
        full_env.update(env or {})
        base = command or [sys.executable, "-m", "jaxllm.entrypoints.openai.api_server", "--model", model]
        cmd = [*base, "--host", "127.0.0.1", "--port", str(self.port), *ENGINE_ARGS, *args]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)
        self._wait_ready(startup_timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not start in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def url_for(self, *parts: str) -> str:
        return self.url + "/" + "/".join(p.strip("/") for p in parts)

    def client(self, api_key: str = "EMPTY", **kwargs):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, **kwargs)

    def async_client(self, api_key: str = "EMPTY", **kwargs):
        import openai

        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, **kwargs)

    def metrics(self) -> dict[str, float]:
        """`vllm:` samples of GET /metrics as {name{labels}: value} and {name: value} (first series)."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line.startswith("vllm:"):
                continue
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
            out.setdefault(key.split("{", 1)[0], float(value))
        return out

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> int:
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def xla_cache_dir(request, tmp_path_factory) -> str:
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return str(cache.mkdir("jaxllm-xla-cache"))
    return str(tmp_path_factory.mktemp("xla-cache"))


@pytest.fixture(scope="session")
def start_server(tiny_model_dir, xla_cache_dir, tmp_path_factory):
    """A factory: `start_server(args, env=..., command=...)` -> a running RemoteServer (stopped at the end)."""
    servers: list[RemoteServer] = []
    log_dir = tmp_path_factory.mktemp("server-logs")

    def start(args: list[str], **kwargs) -> RemoteServer:
        server = RemoteServer(tiny_model_dir, args, xla_cache=xla_cache_dir, log_dir=log_dir, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def default_server(start_server) -> RemoteServer:
    """The plain server most modules test (no API key), serving the tiny model as `tiny-llama`."""
    return start_server(["--served-model-name", SERVED_NAME, "tiny-alias"])


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def offline_llm(tiny_model_dir):
    """An in-process `LLM` over the tiny model with the test servers' engine shape (to compare against)."""
    from jaxllm import LLM

    return LLM(tiny_model_dir, max_num_seqs=64, max_num_batched_tokens=512, num_gpu_blocks_override=1024)
