"""Limits an operator sets, each a 4xx in OpenAI's error shape with a message naming the flag:

    --max-request-body-bytes  413  (by Content-Length, or while a chunked body streams in)
    --max-n                   400  (n, best_of, beam width)
    --max-prompt-tokens       400  (completions and chat)
    --request-timeout         408  (non-streaming), an error event with code 408 (streaming)

A fake runner stands in for the model (each step sleeps a little, so requests take known time).
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.hardening.servers import ThreadServer, fake_llm_engine, server_args

STEP_SECONDS = 0.01  # a fake model step


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    engine = fake_llm_engine(tiny_model_dir)
    engine.runner.hook = lambda sched: time.sleep(STEP_SECONDS)
    srv = ThreadServer(server_args(tiny_model_dir, "--served-model-name", "tiny",
                                   "--max-request-body-bytes", "4096", "--max-n", "3",
                                   "--max-prompt-tokens", "40", "--request-timeout", "0.6"),
                       engine, engine.tokenizer)
    yield srv
    srv.stop()


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == status and isinstance(error["message"], str) and isinstance(error["type"], str)
    return error


def test_body_over_the_limit_is_413(server):
    body = {"prompt": "x" * 5000, "max_tokens": 1}
    error = error_of(server.post("/v1/completions", body), 413)
    assert error["type"] == "RequestTooLargeError" and "--max-request-body-bytes" in error["message"]
    assert "4096 bytes" in error["message"]
    # the same answer for any route, and a body just under the limit is read as usual
    error_of(server.post("/tokenize", {"prompt": "x" * 5000}), 413)
    assert server.post("/v1/completions", {"prompt": "x" * 3000, "max_tokens": 1}).status_code == 400  # too long


def test_chunked_body_over_the_limit_is_413(server):
    def chunks():  # no Content-Length: the body is counted as it arrives
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'", "max_tokens": 1}'

    r = httpx.post(server.url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"},
                   timeout=30)
    error = error_of(r, 413)
    assert "--max-request-body-bytes" in error["message"]


@pytest.mark.parametrize("path, extra", [
    ("/v1/completions", {"n": 4}),
    ("/v1/completions", {"n": 2, "best_of": 5}),
    ("/v1/completions", {"n": 4, "use_beam_search": True}),
    ("/v1/chat/completions", {"n": 10, "temperature": 1.0}),
])
def test_n_over_the_limit_is_400(server, path, extra):
    body = {"max_tokens": 2, **extra}
    body.update({"prompt": "hi"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]})
    error = error_of(server.post(path, body), 400)
    assert "--max-n" in error["message"] and "at most 3" in error["message"]
    assert error["param"] in ("n", "best_of")


def test_n_at_the_limit_is_served(server):
    r = server.post("/v1/completions", {"prompt": "hi", "max_tokens": 2, "n": 3, "temperature": 1.0})
    assert r.status_code == 200 and len(r.json()["choices"]) == 3


def test_prompt_over_the_limit_is_400(server):
    error = error_of(server.post("/v1/completions", {"prompt": list(range(3, 44)), "max_tokens": 1}), 400)
    assert "--max-prompt-tokens" in error["message"] and "41 tokens" in error["message"]
    # every prompt of a batch is checked; truncation happens first
    error_of(server.post("/v1/completions", {"prompt": ["short", list(range(3, 50))], "max_tokens": 1}), 400)
    ok = server.post("/v1/completions", {"prompt": list(range(3, 50)), "truncate_prompt_tokens": 40, "max_tokens": 1})
    assert ok.status_code == 200
    chat = {"messages": [{"role": "user", "content": "word " * 60}], "max_tokens": 1}
    error = error_of(server.post("/v1/chat/completions", chat), 400)
    assert error["param"] == "messages" and "--max-prompt-tokens" in error["message"]


def test_request_over_the_timeout_is_408_and_aborted(server):
    slow = {"prompt": "tell me everything", "max_tokens": 200, "ignore_eos": True}  # ~2 s of steps
    quick = {"prompt": "hi", "max_tokens": 5, "ignore_eos": True}
    results: dict[str, httpx.Response] = {}
    threads = [threading.Thread(target=lambda k=k, b=b: results.__setitem__(k, server.post("/v1/completions", b)))
               for k, b in (("slow", slow), ("quick", quick))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    error = error_of(results["slow"], 408)
    assert error["type"] == "RequestTimeoutError" and "--request-timeout" in error["message"]
    assert 0.5 < time.monotonic() - t0 < 5
    assert results["quick"].status_code == 200
    server.wait_idle()
    assert server.kv_blocks_in_use() == 0  # the timed-out request was aborted, its blocks freed


def test_stream_over_the_timeout_ends_with_an_error_event(server):
    body = {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 200, "ignore_eos": True, "stream": True}
    status, events = server.stream_events("/v1/chat/completions", body)
    assert status == 200 and events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == 408 and "--request-timeout" in error["message"]
    assert any("choices" in json.loads(e) for e in events[:-2])  # tokens streamed before the deadline
    server.wait_idle()
    assert server.kv_blocks_in_use() == 0


def test_limits_are_validated_at_startup():
    from jaxllm.entrypoints.openai.cli_args import validate_args

    for flags in (["--max-n", "0"], ["--max-prompt-tokens", "0"], ["--request-timeout", "0"],
                  ["--shutdown-timeout", "-1"], ["--max-request-body-bytes", "-5"]):
        with pytest.raises(ValueError, match=flags[0]):
            validate_args(server_args("m", *flags))


def test_request_timeout_aborts_a_beam_search_on_a_full_pool(tiny_model_dir):
    """A beam search whose two beams do not both fit in the pool (they share, give up and recompute pages)
    runs past --request-timeout: 408, and every page, shared or not, is given back."""
    engine = fake_llm_engine(tiny_model_dir, num_blocks=17)  # 16 usable pages of 16 tokens = max_model_len
    engine.runner.hook = lambda sched: time.sleep(STEP_SECONDS)
    srv = ThreadServer(server_args(tiny_model_dir, "--request-timeout", "1"), engine, engine.tokenizer)
    try:
        body = {"prompt": list(range(3, 11)), "max_tokens": 240, "n": 2, "use_beam_search": True, "ignore_eos": True}
        error = error_of(srv.post("/v1/completions", body), 408)
        assert "--request-timeout" in error["message"]
        srv.wait_idle()
        assert srv.kv_blocks_in_use() == 0
        short = dict(body, max_tokens=20)
        r = srv.post("/v1/completions", short)
        assert r.status_code == 200 and len(r.json()["choices"]) == 2
        srv.wait_idle()
        assert srv.kv_blocks_in_use() == 0
    finally:
        srv.stop()
