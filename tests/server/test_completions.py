"""POST /v1/completions against a real server, through the official `openai` client and raw HTTP."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from tests.server.conftest import SERVED_NAME

PROMPT = "The quick brown fox"
IGNORE_EOS = {"ignore_eos": True}  # vLLM extras go through the openai client's extra_body


@pytest.fixture(scope="module")
def server(default_server):
    return default_server


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def sse_events(response: httpx.Response) -> list[str]:
    """The `data:` payloads of an SSE response, in order (including the final "[DONE]")."""
    return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


def test_single_completion_shape(client):
    c = client.completions.create(model=SERVED_NAME, prompt=PROMPT, max_tokens=5, temperature=0, extra_body=IGNORE_EOS)
    assert c.id.startswith("cmpl-")
    assert c.object == "text_completion"
    assert isinstance(c.created, int)
    assert c.model == SERVED_NAME
    assert len(c.choices) == 1
    assert c.choices[0].index == 0
    assert c.choices[0].finish_reason == "length"
    assert c.usage.completion_tokens == 5
    assert c.usage.prompt_tokens > 0
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens


def test_served_name_alias_and_empty_model(server, client):
    c = client.completions.create(model="tiny-alias", prompt=PROMPT, max_tokens=2, temperature=0)
    assert c.model == SERVED_NAME  # responses report the first served name
    r = httpx.post(server.url_for("v1/completions"), json={"prompt": PROMPT, "max_tokens": 2})
    assert r.status_code == 200, r.text


def test_raw_response_has_vllm_fields(server):
    r = httpx.post(server.url_for("v1/completions"),
                   json={"model": SERVED_NAME, "prompt": PROMPT, "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200
    body = r.json()
    assert set(body) >= {"id", "object", "created", "model", "choices", "usage", "system_fingerprint"}
    choice = body["choices"][0]
    assert set(choice) >= {"index", "text", "logprobs", "finish_reason", "stop_reason"}
    assert choice["logprobs"] is None and choice["stop_reason"] is None


def test_prompt_forms_agree(client, tokenizer):
    ids = tokenizer(PROMPT).input_ids
    kw = {"model": SERVED_NAME, "max_tokens": 4, "temperature": 0}
    text = client.completions.create(prompt=PROMPT, **kw).choices[0].text
    assert client.completions.create(prompt=ids, **kw).choices[0].text == text
    many = client.completions.create(prompt=[PROMPT, PROMPT], **kw)
    assert [c.text for c in many.choices] == [text, text]
    many_ids = client.completions.create(prompt=[ids, ids], **kw)
    assert [c.index for c in many_ids.choices] == [0, 1]
    assert [c.text for c in many_ids.choices] == [text, text]
    assert many_ids.usage.prompt_tokens == 2 * len(ids)


def test_choices_are_prompt_major_with_n(client):
    c = client.completions.create(model=SERVED_NAME, prompt=[PROMPT, PROMPT], n=2, temperature=1.0, seed=7,
                                  max_tokens=6, extra_body=IGNORE_EOS)
    assert [ch.index for ch in c.choices] == [0, 1, 2, 3]
    # the same prompt and seed give the same samples: index = prompt * n + sample
    assert c.choices[0].text == c.choices[2].text
    assert c.choices[1].text == c.choices[3].text
    assert c.usage.completion_tokens == 4 * 6


def test_seed_reproducible(client):
    kw = {"model": SERVED_NAME, "prompt": PROMPT, "max_tokens": 8, "temperature": 1.0, "extra_body": IGNORE_EOS}
    a = client.completions.create(seed=123, **kw).choices[0].text
    b = client.completions.create(seed=123, **kw).choices[0].text
    assert a == b


def test_streaming_equals_non_streaming(client):
    kw = {"model": SERVED_NAME, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "extra_body": IGNORE_EOS}
    full = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(ch.choices[0].text for ch in chunks) == full
    reasons = [ch.choices[0].finish_reason for ch in chunks if ch.choices[0].finish_reason]
    assert reasons == ["length"]
    assert all(ch.usage is None for ch in chunks)


def test_stream_wire_format_and_usage_chunk(server):
    body = {"model": SERVED_NAME, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url_for("v1/completions"), json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 4
    for chunk in chunks[:-1]:
        assert chunk["object"] == "text_completion" and len(chunk["choices"]) == 1 and chunk["usage"] is None


def test_stream_continuous_usage(client):
    stream = client.completions.create(
        model=SERVED_NAME, prompt=PROMPT, max_tokens=4, temperature=0, extra_body=IGNORE_EOS, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
    )
    chunks = list(stream)
    assert all(ch.usage is not None for ch in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    counts = [ch.usage.completion_tokens for ch in chunks[:-1]]
    assert counts == sorted(counts) and counts[-1] == 4


def test_stream_batch_n(client):
    chunks = list(client.completions.create(model=SERVED_NAME, prompt=[PROMPT, "Hello"], n=2, temperature=1.0,
                                            seed=3, max_tokens=3, extra_body=IGNORE_EOS, stream=True))
    finished = sorted(ch.choices[0].index for ch in chunks if ch.choices[0].finish_reason)
    assert finished == [0, 1, 2, 3]
    assert all(len(ch.choices) == 1 for ch in chunks)


def test_echo_with_logprobs(client, tokenizer):
    for k in (0, 2):
        c = client.completions.create(model=SERVED_NAME, prompt=PROMPT, max_tokens=3, temperature=0, echo=True,
                                      logprobs=k)
        choice = c.choices[0]
        assert choice.text.startswith(PROMPT)
        lp = choice.logprobs
        n_prompt = len(tokenizer(PROMPT).input_ids)
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == n_prompt + 3
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        assert all(max(k, 1) <= len(top) <= k + 1 for top in lp.top_logprobs[1:])


def test_logprobs_limits(client):
    c = client.completions.create(model=SERVED_NAME, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=0)
    assert all(len(top) == 1 for top in c.choices[0].logprobs.top_logprobs)
    c = client.completions.create(model=SERVED_NAME, prompt=PROMPT, max_tokens=3, temperature=0)
    assert c.choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError, match="max allowed: 20"):
        client.completions.create(model=SERVED_NAME, prompt=PROMPT, max_tokens=3, logprobs=21)


def test_stop_token_ids_and_stop_strings(client):
    kw = {"model": SERVED_NAME, "prompt": PROMPT, "temperature": 0}
    full = client.completions.create(max_tokens=12, extra_body={"return_token_ids": True, **IGNORE_EOS},
                                     **kw).choices[0]
    ids = full.model_extra["token_ids"]
    j = next(i for i in range(2, len(ids)) if ids[i] not in ids[:i])
    c = client.completions.create(max_tokens=12, extra_body={"stop_token_ids": [ids[j]], **IGNORE_EOS}, **kw)
    assert c.choices[0].finish_reason == "stop"
    assert c.choices[0].model_extra["stop_reason"] == ids[j]
    assert c.usage.completion_tokens == j + 1

    text = full.text
    i = next(i for i in range(2, len(text) - 1) if "\ufffd" not in text[i:i + 2] and text.find(text[i:i + 2]) == i)
    stop = text[i:i + 2]
    c = client.completions.create(max_tokens=12, stop=[stop], extra_body=IGNORE_EOS, **kw).choices[0]
    assert (c.text, c.finish_reason, c.model_extra["stop_reason"]) == (text[:i], "stop", stop)
    c = client.completions.create(max_tokens=12, stop=stop,
                                  extra_body={"include_stop_str_in_output": True, **IGNORE_EOS}, **kw)
    assert c.choices[0].text == text[:i + 2]


def test_vllm_sampling_extras(client):
    c = client.completions.create(
        model=SERVED_NAME, prompt=PROMPT, max_tokens=5, temperature=0.7, seed=1,
        extra_body={"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 5, "ignore_eos": False,
                    "skip_special_tokens": False, "spaces_between_special_tokens": True},
    )
    assert c.usage.completion_tokens == 5


def test_async_client_concurrent(server):
    async def run():
        client = server.async_client()
        calls = [client.completions.create(model=SERVED_NAME, prompt=f"{PROMPT} {i}", max_tokens=4, temperature=0,
                                           extra_body=IGNORE_EOS) for i in range(8)]
        results = await asyncio.gather(*calls)
        stream = await client.completions.create(model=SERVED_NAME, prompt=PROMPT, max_tokens=4, temperature=0,
                                                 extra_body=IGNORE_EOS, stream=True)
        streamed = "".join([ch.choices[0].text async for ch in stream])
        await client.close()
        return results, streamed

    results, streamed = asyncio.run(run())
    assert all(r.usage.completion_tokens == 4 for r in results)
    assert isinstance(streamed, str)


# ---- errors ------------------------------------------------------------------------------------


def _post(server, body, **kw):
    return httpx.post(server.url_for("v1/completions"), json=body, timeout=60, **kw)


def _error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and set(err) == {"message", "type", "param", "code"}
    return err["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"prompt": PROMPT, "max_tokens": 1000}, "'max_tokens' or 'max_completion_tokens' is too large: 1000"),
        ({"prompt": "fox " * 300}, "This model's maximum context length is 256 tokens. However, your request has"),
        ({"prompt": PROMPT, "stream_options": {"include_usage": True}}, "Stream options can only be defined when"),
        ({"prompt": PROMPT, "suffix": "x"}, "suffix is not currently supported"),
        ({"prompt": PROMPT, "use_beam_search": True, "n": 11}, "beam_width (11) needs 22 log-probabilities"),
        ({"prompt": [1, 2, 99999]}, "out of vocabulary"),
        ({"prompt": []}, "Either prompt or prompt_embeds must be provided and non-empty."),
        ({"prompt": PROMPT, "n": 2, "temperature": 0}, "n must be 1 when using greedy sampling"),
        ({"prompt": PROMPT, "seed": 2**63}, "less_than_equal"),
        ({"prompt": PROMPT, "n": "many"}, "int_parsing"),
        ({"prompt": PROMPT, "stop_token_ids": [100000]}, "out-of-vocab"),
        ({"prompt": PROMPT, "temperature": 5}, "temperature must be in [0, 2]"),
    ],
)
def test_bad_requests_are_400(server, body, message):
    assert message in _error(_post(server, {"model": SERVED_NAME, **body}), 400)


def test_not_json_bodies_are_400(server):
    url = server.url_for("v1/completions")
    r = httpx.post(url, content=b"prompt=hi", headers={"content-type": "application/x-www-form-urlencoded"})
    assert "Only 'application/json' is allowed" in _error(r, 400)
    for body in ('"hello"', "[1, 2]", "3", "null", "{not json"):
        r = httpx.post(url, content=body.encode(), headers={"content-type": "application/json"})
        _error(r, 400)


def test_unknown_model_is_404(server, client):
    message = _error(_post(server, {"model": "gpt-3.5-turbo-instruct", "prompt": PROMPT}), 404)
    assert message == "The model `gpt-3.5-turbo-instruct` does not exist."
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt=PROMPT, max_tokens=2)


def test_server_answers_after_errors(client):
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=SERVED_NAME, prompt=PROMPT, max_tokens=10_000)
    assert client.completions.create(model=SERVED_NAME, prompt=PROMPT, max_tokens=2).choices
