"""Servers started in-process for the hardening tests: `create_server()` (what `jaxllm serve` runs) under
uvicorn in a thread, on a free loopback port, around either

* a real `LLM` (jax, the tiny model), whose runner the fault tests wrap, or
* a real `LLMEngine` over the tiny model's config and tokenizer with a fake runner (no jax, no compiling:
  each step takes microseconds), for the API fuzzer and the limit tests.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from jaxllm.config import CacheConfig, ModelConfig, SchedulerConfig
from jaxllm.engine.llm_engine import LLMEngine
from jaxllm.entrypoints.openai.api_server import create_server, make_arg_parser
from jaxllm.model_loader import load_generation_config
from jaxllm.tokenizer import get_tokenizer
from tests.hardening.runners import HostRunner, OverlapRunner
from tests.server.conftest import free_port


def server_args(model: str, *flags: str) -> Any:
    """`python -m jaxllm.entrypoints.openai.api_server --model MODEL FLAGS` as parsed flags."""
    return make_arg_parser().parse_args(["--model", model, "--disable-log-stats", "--uvicorn-log-level", "warning",
                                         *flags])


def fake_llm_engine(model_dir: str, *, num_blocks: int = 1024, max_num_seqs: int = 16, max_model_len: int = 256,
                    max_logprobs: int = 20, overlap: bool = False) -> LLMEngine:
    """The real engine (scheduler, detokenizer, stop strings, logprobs) over a fake runner."""
    model = ModelConfig.from_pretrained(model_dir)
    vocab = model.vocab_size
    runner_cls = OverlapRunner if overlap else HostRunner
    runner = runner_cls(num_top=vocab if max_logprobs < 0 else max_logprobs, vocab=vocab)
    return LLMEngine(
        model, CacheConfig(block_size=16, num_blocks=num_blocks),
        SchedulerConfig(max_model_len=max_model_len, max_num_seqs=max_num_seqs),
        get_tokenizer(model_dir), runner, generation_config=load_generation_config(model_dir),
        max_logprobs=max_logprobs,
    )


class ThreadServer:
    """A server built by `create_server(args, llm_engine, tokenizer)`, run by uvicorn in a thread."""

    def __init__(self, args: Any, llm_engine: Any, tokenizer: Any, startup_timeout: float = 60.0):
        args.port = free_port()
        self.llm_engine = llm_engine
        self.server = create_server(args, llm_engine, tokenizer, host="127.0.0.1")
        self.app = self.server.config.app
        self.url = f"http://127.0.0.1:{args.port}"
        self.thread = threading.Thread(target=self.server.run, name="test-server", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + startup_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    @property
    def engine(self) -> Any:
        """The `AsyncLLMEngine`."""
        return self.app.state.engine

    @property
    def tracker(self) -> Any:
        return self.app.state.tracker

    def post(self, path: str, body: Any, timeout: float = 60.0, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=timeout, **kwargs)

    def stream_events(self, path: str, body: dict, timeout: float = 60.0) -> tuple[int, list[str]]:
        """(status, the `data:` payloads) of a streaming request."""
        with httpx.stream("POST", self.url + path, json=body, timeout=timeout) as r:
            return r.status_code, [line[6:] for line in r.iter_lines() if line.startswith("data: ")]

    def kv_blocks_in_use(self) -> int:
        bm = self.llm_engine.block_manager
        return bm.num_blocks - 1 - bm.num_free_blocks

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until the engine has no request left (aborts are asynchronous)."""
        deadline = time.monotonic() + timeout
        while self.llm_engine.has_unfinished_requests() or self.engine.snapshot().num_unfinished_requests:
            assert time.monotonic() < deadline, "the engine still has requests"
            time.sleep(0.02)

    def stop(self, timeout: float = 60.0) -> None:
        """Shut down the way SIGTERM does (drain, then stop the engine)."""
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the server did not stop"
