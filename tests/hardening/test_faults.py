"""Injected faults, through HTTP, on a server around a real `LLM` (the tiny model) with a tiny KV pool.

The server is `create_server()` in a thread; the runner's `dispatch` is wrapped (`FaultInjector`):

* a step that raises when a marked request (request id containing "fault-raise") is in the batch: the
  engine retries the batch one sequence at a time, so only the marked request fails: HTTP 500, or an
  error event in a stream; the others complete with the text they give without faults;
* NaN logits for one row: one token's embedding row is NaN, so every request whose prompt holds it gets
  non-finite logits and fails alone, and the pages it wrote are reused by later requests safely;
* KV pool exhaustion: concurrent requests over an 11-page pool are preempted and resumed, and all
  succeed; `vllm:num_preemptions_total` counts the preemptions and no page is left in use;
* a dead engine loop (a `BaseException` out of a step): /health turns 503, the open stream ends with a
  503 error event, and new requests get a 503 at once instead of hanging. (Last: it kills the engine.)
"""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import pytest

from jaxllm.entrypoints.openai.api_server import load_llm
from tests.hardening.servers import ThreadServer, server_args

POOL_BLOCKS = 12  # 11 usable pages of 16 tokens (max_model_len 128): about two long requests' worth
GOOD_PROMPTS = ["The quick brown fox", "def fibonacci(n):", "Once upon a time", "import os"]


class EngineKilled(BaseException):
    """Not an `Exception`: the engine does not catch it, so it ends the engine loop."""


class FaultInjector:
    """Wraps `runner.dispatch`: raises for marked requests, or kills the engine when `fatal` is set."""

    def __init__(self, runner, marker: str = "fault-raise"):
        self.runner = runner
        self.marker = marker
        self.fatal = False
        self.raised = 0
        self._embed = None
        self._dispatch = runner.dispatch
        runner.dispatch = self.dispatch

    def dispatch(self, sched, block_manager):
        if self.fatal:
            raise EngineKilled("injected: the device is gone")
        if any(self.marker in s.request_id for s in sched.requests):
            self.raised += 1
            raise RuntimeError("injected fault")
        return self._dispatch(sched, block_manager)

    def poison_token(self, token_id: int) -> None:
        """Give `token_id` a NaN embedding: any sequence holding it gets non-finite logits."""
        import jax.numpy as jnp

        params = self.runner.params
        self._embed = params["embed"]
        params["embed"] = params["embed"].at[token_id].set(jnp.nan)

    def heal(self) -> None:
        if self._embed is not None:
            self.runner.params["embed"], self._embed = self._embed, None


@pytest.fixture(scope="module")
def faulty(tiny_model_dir):
    args = server_args(tiny_model_dir, "--served-model-name", "tiny", "--max-num-seqs", "4", "--max-model-len", "128",
                       "--max-num-batched-tokens", "64", "--num-gpu-blocks-override", str(POOL_BLOCKS))
    llm = load_llm(args)
    injector = FaultInjector(llm.runner)
    server = ThreadServer(args, llm.llm_engine, llm.tokenizer)
    yield server, injector
    if server.thread.is_alive():
        server.stop()


@pytest.fixture(scope="module")
def reference(faulty):
    """The texts of GOOD_PROMPTS (greedy) before any fault."""
    server, _ = faulty
    out = {}
    for prompt in GOOD_PROMPTS:
        r = server.post("/v1/completions", completion(prompt))
        assert r.status_code == 200, r.text
        out[prompt] = r.json()["choices"][0]["text"]
    return out


def completion(prompt, **extra) -> dict:
    return {"prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True, **extra}


def concurrently(calls: list) -> list:
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def assert_clean(server) -> None:
    server.wait_idle()
    assert server.kv_blocks_in_use() == 0


def test_a_step_that_raises_fails_only_its_request(faulty, reference):
    server, injector = faulty
    bad = completion("The quick brown fox", request_id="fault-raise-1")
    bad_chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 12, "temperature": 0,
                "request_id": "fault-raise-2"}
    calls = [lambda p=p: server.post("/v1/completions", completion(p)) for p in GOOD_PROMPTS]
    calls += [lambda: server.post("/v1/completions", bad), lambda: server.post("/v1/chat/completions", bad_chat)]
    *good, failed, failed_chat = concurrently(calls)
    for prompt, r in zip(GOOD_PROMPTS, good):
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == reference[prompt]
    for r in (failed, failed_chat):
        assert r.status_code == 500
        assert r.json()["error"] == {"message": "Internal server error", "type": "InternalServerError",
                                     "param": None, "code": 500}
    assert injector.raised >= 2
    assert_clean(server)
    errors = httpx.get(server.url + "/metrics").text
    assert 'vllm:request_success_total{finished_reason="error",model_name="tiny"} 2.0' in errors


def test_a_stream_whose_step_raises_ends_with_an_error_event(faulty, reference):
    server, _ = faulty
    bad = completion("Once upon a time", request_id="fault-raise-3", stream=True)
    calls = [lambda p=p: server.stream_events("/v1/completions", completion(p, stream=True)) for p in GOOD_PROMPTS]
    calls.append(lambda: server.stream_events("/v1/completions", bad))
    *good, (status, events) = concurrently(calls)
    assert status == 200 and events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == 500
    for prompt, (status, events) in zip(GOOD_PROMPTS, good):
        assert status == 200 and events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert "".join(c["choices"][0]["text"] for c in chunks) == reference[prompt]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert_clean(server)


def test_nan_logits_fail_only_their_request(faulty, reference, request):
    server, injector = faulty
    tok = server.llm_engine.tokenizer
    used = {t for p in GOOD_PROMPTS for t in tok(p).input_ids + tok(reference[p]).input_ids}
    nan_token = next(t for t in range(len(tok) - 1, 0, -1) if t not in used and t not in tok.all_special_ids)
    injector.poison_token(nan_token)
    request.addfinalizer(injector.heal)
    bad_ids = [5, 6, nan_token, 7]
    calls = [lambda p=p: server.post("/v1/completions", completion(p)) for p in GOOD_PROMPTS]
    calls += [lambda: server.post("/v1/completions", completion(bad_ids)),
              lambda: server.stream_events("/v1/completions", completion(bad_ids, stream=True))]
    *good, failed, (status, events) = concurrently(calls)
    assert failed.status_code == 500 and failed.json()["error"]["code"] == 500
    assert status == 200 and json.loads(events[-2])["error"]["code"] == 500 and events[-1] == "[DONE]"
    for prompt, r in zip(GOOD_PROMPTS, good):
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == reference[prompt]
    assert_clean(server)
    # The pages the NaN request wrote go to the next requests: they must not pick the NaN up.
    again = concurrently([lambda p=p: server.post("/v1/completions", completion(p)) for p in GOOD_PROMPTS])
    for prompt, r in zip(GOOD_PROMPTS, again):
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == reference[prompt]
    assert_clean(server)


def test_kv_pool_exhaustion_preempts_and_resumes(faulty):
    server, _ = faulty
    server.llm_engine.scheduler.growth_ratio = 0.0  # admit as if nothing grew, so the pool runs short
    before = server.llm_engine.stats["preemptions"]
    bodies = [completion(f"Request number {i} says", max_tokens=90) for i in range(8)]
    calls = [lambda b=b: server.post("/v1/completions", b, timeout=300) for b in bodies[:4]]
    calls += [lambda b=b: server.stream_events("/v1/completions", dict(b, stream=True), timeout=300)
              for b in bodies[4:]]
    results = concurrently(calls)
    for r in results[:4]:
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 90 and r.json()["choices"][0]["finish_reason"] == "length"
    for status, events in results[4:]:
        chunks = [json.loads(e) for e in events[:-1]]
        assert status == 200 and events[-1] == "[DONE]" and "error" not in chunks[-1]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert server.llm_engine.stats["preemptions"] > before, "the pool never ran short"
    metrics = httpx.get(server.url + "/metrics").text
    preempted = [line for line in metrics.splitlines() if line.startswith("vllm:num_preemptions_total")]
    assert preempted and float(preempted[0].rsplit(" ", 1)[1]) > 0
    assert_clean(server)


def test_dead_engine_loop_turns_health_and_new_requests_into_503(faulty):
    server, injector = faulty
    assert httpx.get(server.url + "/health").status_code == 200
    with httpx.stream("POST", server.url + "/v1/completions", timeout=30,
                      json=completion("The end", max_tokens=100, stream=True)) as r:
        assert r.status_code == 200
        events = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 2:
                    injector.fatal = True  # the next step ends the engine loop
    assert json.loads(events[-2])["error"]["code"] == 503 and events[-1] == "[DONE]"
    assert httpx.get(server.url + "/health", timeout=5).status_code == 503
    r = server.post("/v1/completions", completion("hello"), timeout=10)
    assert r.status_code == 503 and r.json()["error"]["type"] == "ServiceUnavailableError"
    r = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True},
                    timeout=10)
    assert r.status_code == 503
    assert server.kv_blocks_in_use() == 0  # the dead engine's requests were aborted
