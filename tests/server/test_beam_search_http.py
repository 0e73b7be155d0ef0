"""`use_beam_search` with `n` beams on /v1/completions and /v1/chat/completions, against `LLM.beam_search`.

The server's choices must be the offline search's beams (same model, same prompt ids, same parameters),
best first; streaming sends each beam whole in one event; invalid beam requests are 400s.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from jaxllm import BeamSearchParams
from jaxllm.chat_utils import apply_chat_template
from tests.server.conftest import SERVED_NAME

PROMPT = "The quick brown fox"
PROMPTS = ["The quick brown fox", "Once upon a time"]
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello"}]
BEAM = {"use_beam_search": True}


@pytest.fixture(scope="module")
def server(default_server):
    return default_server


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def tok(offline_llm):
    return offline_llm.get_tokenizer()


def offline(llm, ids: list[int], **params) -> list[dict]:
    """The offline search's beams as {tokens (generated), text (generated), cum, logprobs, finish_reason}."""
    bp = BeamSearchParams(**params)
    (out,) = llm.beam_search([{"prompt_token_ids": ids}], bp)
    tok = llm.get_tokenizer()
    beams = []
    for s in out.sequences:
        gen = s.tokens[len(ids):]
        shown = gen[:-1] if s.finish_reason == "stop" and not bp.include_stop_str_in_output else gen
        beams.append({"tokens": gen, "text": tok.decode(shown, skip_special_tokens=True), "cum": s.cum_logprob,
                      "logprobs": [step[t].logprob for t, step in zip(gen, s.logprobs)],
                      "finish_reason": s.finish_reason})
    return beams


def chat_ids(tok, messages=MESSAGES) -> list[int]:
    """The prompt ids `LLM.chat` (and the server) build for a conversation."""
    return tok(apply_chat_template(tok, messages), add_special_tokens=False).input_ids


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url_for(path), json={"model": SERVED_NAME, **body}, timeout=120)


def sse_events(response: httpx.Response) -> list[str]:
    return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


def stream(server, path: str, body: dict) -> list:
    """The JSON events of a streamed request, then "[DONE]"."""
    body = {"model": SERVED_NAME, "stream": True, "stream_options": {"include_usage": True}, **body}
    with httpx.stream("POST", server.url_for(path), json=body, timeout=120) as r:
        assert r.status_code == 200
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]] + ["[DONE]"]


# ---- /v1/completions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "extra"),
    [(3, {}), (2, {"length_penalty": 0.5, "ignore_eos": True}), (3, {"length_penalty": 2.0, "best_of": 5})],
)
def test_completion_beams_equal_offline_beam_search(client, offline_llm, tok, n, extra):
    r = client.completions.create(model=SERVED_NAME, prompt=PROMPT, n=n, max_tokens=6,
                                  extra_body={**BEAM, "return_token_ids": True, **extra})
    ids = tok(PROMPT).input_ids
    params = {k: v for k, v in extra.items() if k in ("length_penalty", "ignore_eos")}
    ref = offline(offline_llm, ids, beam_width=n, max_tokens=6, **params)
    assert [c.index for c in r.choices] == list(range(n))
    assert [c.token_ids for c in r.choices] == [b["tokens"] for b in ref]
    assert [c.text for c in r.choices] == [b["text"] for b in ref]
    assert [c.finish_reason for c in r.choices] == [b["finish_reason"] for b in ref]
    assert len({tuple(c.token_ids) for c in r.choices}) == n  # distinct beams
    assert r.choices[0].prompt_token_ids == ids
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.completion_tokens == sum(len(b["tokens"]) for b in ref)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_several_prompts_are_prompt_major(server, offline_llm, tok):
    r = post(server, "v1/completions", {"prompt": PROMPTS, "n": 2, "max_tokens": 5, **BEAM,
                                        "return_token_ids": True})
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    for p, prompt in enumerate(PROMPTS):
        ref = offline(offline_llm, tok(prompt).input_ids, beam_width=2, max_tokens=5)
        got = choices[2 * p: 2 * p + 2]
        assert [c["token_ids"] for c in got] == [b["tokens"] for b in ref]
        assert [c["text"] for c in got] == [b["text"] for b in ref]
    assert r.json()["usage"]["completion_tokens"] == sum(len(c["token_ids"]) for c in choices)


def test_completion_logprobs_are_the_beams(client, offline_llm, tok):
    r = client.completions.create(model=SERVED_NAME, prompt=PROMPT, n=3, max_tokens=6, logprobs=2,
                                  extra_body={**BEAM, "return_token_ids": True})
    ref = offline(offline_llm, tok(PROMPT).input_ids, beam_width=3, max_tokens=6)
    for choice, beam in zip(r.choices, ref):
        lp = choice.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(beam["tokens"])
        assert lp.token_logprobs == pytest.approx(beam["logprobs"], abs=1e-4)
        assert sum(lp.token_logprobs) == pytest.approx(beam["cum"], abs=1e-3)
        assert all(len(top) <= 2 for top in lp.top_logprobs)
    best = [sum(c.logprobs.token_logprobs) / len(c.token_ids) for c in r.choices]
    assert best == sorted(best, reverse=True)  # best first (length_penalty 1: mean logprob)


def test_completion_stream_sends_each_beam_in_one_event(server):
    body = {"prompt": PROMPT, "n": 3, "max_tokens": 6, **BEAM}
    full = post(server, "v1/completions", body).json()
    events = stream(server, "v1/completions", body)
    chunks, usage, done = events[:-2], events[-2], events[-1]
    assert done == "[DONE]"
    assert [len(c["choices"]) for c in chunks] == [1, 1, 1]
    got = {c["choices"][0]["index"]: c["choices"][0] for c in chunks}
    assert sorted(got) == [0, 1, 2]
    for want in full["choices"]:
        assert got[want["index"]]["text"] == want["text"]
        assert got[want["index"]]["finish_reason"] == want["finish_reason"]
    assert usage["choices"] == [] and usage["usage"] == full["usage"]


def test_beam_search_runs_next_to_sampled_requests(server, offline_llm, tok):
    async def main():
        client = server.async_client()
        beam = client.completions.create(model=SERVED_NAME, prompt=PROMPT, n=3, max_tokens=6,
                                         extra_body={**BEAM, "return_token_ids": True})
        sampled = [client.completions.create(model=SERVED_NAME, prompt=p, max_tokens=8, temperature=0,
                                             extra_body={"ignore_eos": True}) for p in PROMPTS]
        return await asyncio.gather(beam, *sampled)

    beam, *sampled = asyncio.run(main())
    ref = offline(offline_llm, tok(PROMPT).input_ids, beam_width=3, max_tokens=6)
    assert [c.token_ids for c in beam.choices] == [b["tokens"] for b in ref]
    assert all(s.usage.completion_tokens == 8 for s in sampled)


# ---- /v1/chat/completions ----------------------------------------------------------------------


def test_chat_beams_equal_offline_beam_search(client, offline_llm, tok):
    r = client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, n=3, max_completion_tokens=6,
                                       logprobs=True, top_logprobs=2, extra_body={**BEAM, "return_token_ids": True})
    ids = chat_ids(tok)
    ref = offline(offline_llm, ids, beam_width=3, max_tokens=6)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.token_ids for c in r.choices] == [b["tokens"] for b in ref]
    assert [c.message.content for c in r.choices] == [b["text"] for b in ref]
    assert all(c.message.role == "assistant" for c in r.choices)
    assert len({tuple(c.token_ids) for c in r.choices}) == 3
    for choice, beam in zip(r.choices, ref):
        content = choice.logprobs.content
        assert [t.logprob for t in content] == pytest.approx(beam["logprobs"], abs=1e-4)
        assert all(len(t.top_logprobs) <= 2 for t in content)
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.completion_tokens == sum(len(b["tokens"]) for b in ref)


def test_chat_max_tokens_and_penalty_are_honoured(server, offline_llm, tok):
    body = {"messages": MESSAGES, "n": 2, "max_tokens": 4, "length_penalty": 0.0, "ignore_eos": True,
            "temperature": 0.7, **BEAM, "return_token_ids": True}
    r = post(server, "v1/chat/completions", body)
    assert r.status_code == 200, r.text
    ref = offline(offline_llm, chat_ids(tok), beam_width=2, max_tokens=4, length_penalty=0.0, ignore_eos=True)
    assert [c["token_ids"] for c in r.json()["choices"]] == [b["tokens"] for b in ref]
    assert all(len(c["token_ids"]) == 4 for c in r.json()["choices"])


def test_chat_stream_sends_each_beam_in_one_event(server):
    body = {"messages": MESSAGES, "n": 3, "max_completion_tokens": 6, **BEAM}
    full = post(server, "v1/chat/completions", body).json()
    events = stream(server, "v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"] == full["usage"]
    chunks = events[:-2]
    roles = [c for c in chunks if "role" in c["choices"][0]["delta"]]
    content = [c for c in chunks if "role" not in c["choices"][0]["delta"]]
    assert len(roles) == 3 and len(content) == 3  # a role chunk, then the whole beam, per choice
    got = {c["choices"][0]["index"]: c["choices"][0] for c in content}
    for want in full["choices"]:
        assert got[want["index"]]["delta"]["content"] == want["message"]["content"]
        assert got[want["index"]]["finish_reason"] == want["finish_reason"]


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("v1/completions", {"prompt": PROMPT, "n": 11}, "beam_width (11) needs 22 log-probabilities"),
        ("v1/completions", {"prompt": PROMPT, "n": 11, "stream": True}, "beam_width (11)"),
        ("v1/completions", {"prompt": PROMPTS, "n": 11}, "beam_width (11)"),
        ("v1/completions", {"prompt": PROMPT, "n": 0}, "beam_width must be at least 1"),
        ("v1/completions", {"prompt": PROMPT, "max_tokens": 1000}, "'max_tokens' or 'max_completion_tokens' is too"),
        ("v1/completions", {"prompt": PROMPT, "echo": True, "logprobs": 1}, "not available with `use_beam_search`"),
        ("v1/completions", {"prompt": PROMPT, "prompt_logprobs": 1}, "not available with `use_beam_search`"),
        ("v1/completions", {"prompt": PROMPT, "logprobs": 21}, "max allowed: 20"),
        ("v1/completions", {"prompt": PROMPT, "response_format": {"type": "json_object"}}, "Structured outputs"),
        ("v1/chat/completions", {"messages": MESSAGES, "n": 11}, "beam_width (11) needs 22 log-probabilities"),
        ("v1/chat/completions", {"messages": MESSAGES, "n": 11, "stream": True}, "beam_width (11)"),
        ("v1/chat/completions", {"messages": MESSAGES, "logprobs": True, "top_logprobs": 21}, "max allowed: 20"),
        ("v1/chat/completions", {"messages": MESSAGES, "max_completion_tokens": 500}, "is too large: 500"),
    ],
)
def test_bad_beam_requests_are_400(server, path, body, message):
    r = post(server, path, {**body, **BEAM})
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]


def test_server_serves_beams_after_errors(server, client):
    assert post(server, "v1/completions", {"prompt": PROMPT, "n": 11, **BEAM}).status_code == 400
    r = client.completions.create(model=SERVED_NAME, prompt=PROMPT, n=2, max_tokens=3, extra_body=BEAM)
    assert len(r.choices) == 2


def test_hanging_up_during_a_beam_search_frees_its_blocks(server, client):
    body = {"model": SERVED_NAME, "prompt": "Hang up early", "n": 10, "max_tokens": 240, "ignore_eos": True, **BEAM}
    keys = [f'vllm:request_success_total{{finished_reason="{r}",model_name="{SERVED_NAME}"}}'
            for r in ("abort", "length")]
    before = server.metrics()

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            try:
                await http.post("/v1/completions", json=body, timeout=0.2)
            except httpx.ReadTimeout:
                pass
            async with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                assert r.status_code == 200  # headers only: the beams come when the search is over

    asyncio.run(run())
    deadline = time.monotonic() + 60
    while True:
        m = server.metrics()
        idle = m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0
        if (idle and m["vllm:kv_cache_usage_perc"] == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert idle and m["vllm:kv_cache_usage_perc"] == 0
    # each search was aborted when its client left (or, on a fast machine, had finished before)
    assert sum(m[k] - before[k] for k in keys) == 2
    r = client.completions.create(model=SERVED_NAME, prompt=PROMPT, n=2, max_tokens=3, extra_body=BEAM)
    assert len(r.choices) == 2


# ---- request -> BeamSearchParams, and the async engine -------------------------------------------


def test_request_fields_become_beam_search_params():
    from jaxllm.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest
    from jaxllm.entrypoints.openai.serving_engine import OpenAIServing, ServingConfig

    serving = OpenAIServing(None, None, ServingConfig(["m"], "/m", 256, 400, default_sampling={"temperature": 0.6}))
    req = CompletionRequest(prompt="x", n=3, best_of=7, ignore_eos=True, include_stop_str_in_output=True,
                            length_penalty=0.5, temperature=0.3, stop=["never"], **BEAM)
    assert serving.sampling_params(req, 9, None, None) == BeamSearchParams(
        beam_width=3, max_tokens=9, ignore_eos=True, temperature=0.3, length_penalty=0.5,
        include_stop_str_in_output=True)
    chat = ChatCompletionRequest(messages=MESSAGES, n=2, **BEAM)
    assert serving.sampling_params(chat, 4, 0, None) == BeamSearchParams(beam_width=2, max_tokens=4, temperature=0.6)
    sampled = serving.sampling_params(CompletionRequest(prompt="x", n=2, temperature=1.0), 4, None, None)
    assert type(sampled).__name__ == "SamplingParams" and sampled.n == 2



def test_async_engine_adds_beam_requests_on_its_thread():
    from jaxllm.engine.async_engine import AsyncLLMEngine
    from tests.server.fake_engine import FakeEngine

    fake = FakeEngine()
    engine = AsyncLLMEngine(fake)

    async def main():
        outs = [o async for o in engine.generate({"prompt_token_ids": [3, 4]},
                                                 BeamSearchParams(beam_width=3, max_tokens=4), "b1")]
        stream = await engine.add_beam_request("b2", {"prompt_token_ids": [3]}, BeamSearchParams(2, 2))
        outs2 = [o async for o in stream]
        with pytest.raises(ValueError, match="over the limit"):
            await engine.add_request("b3", {"prompt_token_ids": [3]}, BeamSearchParams(beam_width=5, max_tokens=2))
        engine.shutdown()
        return outs, outs2

    outs, outs2 = asyncio.run(asyncio.wait_for(main(), 30))
    assert len(outs) == 1 and outs[0].finished
    assert [o.index for o in outs[0].outputs] == [0, 1, 2]
    assert [o.text for o in outs[0].outputs] == ["b0", "b1", "b2"]
    assert len(outs2) == 1 and len(outs2[0].outputs) == 2
    assert fake.beam_threads == ["jaxllm-engine", "jaxllm-engine"]


def test_leaving_a_beam_stream_early_aborts_the_search():
    from jaxllm.engine.async_engine import AsyncLLMEngine
    from tests.server.fake_engine import FakeEngine

    fake = FakeEngine()
    engine = AsyncLLMEngine(fake)

    async def main():
        stream = await engine.add_request("long", {"prompt_token_ids": [3]}, BeamSearchParams(3, 100_000))
        deadline = time.monotonic() + 20
        while "long" not in fake.requests and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stream.close()  # the client went away before the search finished
        while not fake.aborted and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        engine.shutdown()

    asyncio.run(asyncio.wait_for(main(), 30))
    assert fake.aborted == ["long"] and not fake.requests
