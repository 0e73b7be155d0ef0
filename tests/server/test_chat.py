"""POST /v1/chat/completions against a real server (the tiny tokenizer's chat template)."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from tests.server.conftest import SERVED_NAME

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def server(default_server):
    return default_server


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def test_chat_completion_shape(client, tokenizer):
    r = client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, max_completion_tokens=5,
                                       temperature=0, extra_body={"ignore_eos": True})
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert r.model == SERVED_NAME
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason == "length"
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert r.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False).input_ids)
    assert r.usage.completion_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5


def test_max_tokens_and_default_budget(server, client):
    r = client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, max_tokens=3, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3
    # no limit given: the rest of the context (256 tokens); ignore_eos makes it use all of it
    body = {"model": SERVED_NAME, "messages": MESSAGES, "temperature": 0, "ignore_eos": True}
    usage = httpx.post(server.url_for("v1/chat/completions"), json=body, timeout=120).json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == 256


def test_streaming_matches_non_streaming(client):
    kw = {"model": SERVED_NAME, "messages": MESSAGES, "max_completion_tokens": 8, "temperature": 0,
              "extra_body": {"ignore_eos": True}}
    full = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert [c.choices[0].delta.role for c in chunks[1:]] == [None] * (len(chunks) - 1)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["length"]
    assert all(c.object == "chat.completion.chunk" and c.usage is None for c in chunks)


def test_stream_include_usage_wire_format(server):
    body = {"model": SERVED_NAME, "messages": MESSAGES, "max_completion_tokens": 3, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url_for("v1/chat/completions"), json=body, timeout=60) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 3
    first = json.loads(events[0])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("usage" not in json.loads(e) for e in events[:-2])


def test_stream_n_gives_every_index(client):
    chunks = list(client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, n=2, temperature=1.0,
                                                 seed=5, max_completion_tokens=4, stream=True,
                                                 extra_body={"ignore_eos": True}))
    roles = [c.choices[0].index for c in chunks if c.choices[0].delta.role]
    assert roles == [0, 1]
    finished = sorted(c.choices[0].index for c in chunks if c.choices[0].finish_reason)
    assert finished == [0, 1]


def test_logprobs(client):
    r = client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, max_completion_tokens=4,
                                       temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.logprob <= 0 and t.logprob >= -9999.0 for t in content)
    r = client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, max_completion_tokens=2,
                                       temperature=0, logprobs=True, top_logprobs=0)
    assert all(t.top_logprobs == [] for t in r.choices[0].logprobs.content)
    r = client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, max_completion_tokens=2)
    assert r.choices[0].logprobs is None


def test_content_parts_equal_string_content(client):
    kw = {"model": SERVED_NAME, "max_completion_tokens": 5, "temperature": 0}
    text = client.chat.completions.create(messages=[{"role": "user", "content": "Say hello"}], **kw)
    parts = client.chat.completions.create(
        messages=[{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}], **kw)
    assert parts.choices[0].message.content == text.choices[0].message.content


def test_continue_final_message_and_echo(server):
    body = {"model": SERVED_NAME, "max_completion_tokens": 3, "temperature": 0,
            "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Well,"}],
            "add_generation_prompt": False, "continue_final_message": True}
    url = server.url_for("v1/chat/completions")
    plain = httpx.post(url, json=body).json()["choices"][0]["message"]
    echoed = httpx.post(url, json={**body, "echo": True}).json()["choices"][0]["message"]
    assert echoed["content"] == "Well," + plain["content"]


def test_langchain_style_payload_with_nulls(server):
    """ChatOpenAI / langchain_openai send explicit nulls and `stream: false`."""
    body = {"model": SERVED_NAME, "messages": MESSAGES, "stream": False, "n": 1, "temperature": 0.7,
            "logit_bias": None, "seed": None, "logprobs": None, "top_p": None, "presence_penalty": None,
            "frequency_penalty": None, "max_tokens": 4, "stop": None, "user": None}
    r = httpx.post(server.url_for("v1/chat/completions"), json=body, timeout=60)
    assert r.status_code == 200, r.text


def test_async_client(server):
    async def run():
        client = server.async_client()
        r = await client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, max_completion_tokens=3)
        stream = await client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES,
                                                      max_completion_tokens=3, stream=True,
                                                      stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        await client.close()
        return r, chunks

    r, chunks = asyncio.run(run())
    assert r.choices[0].message.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"top_logprobs": 2}, "when using `top_logprobs`, `logprobs` must be set to true."),
        ({"logprobs": True, "top_logprobs": 21}, "max allowed: 20"),
        ({"tool_choice": "auto"}, "When using `tool_choice`, `tools` must be set."),
        ({"max_completion_tokens": 500}, "'max_tokens' or 'max_completion_tokens' is too large: 500"),
        ({"messages": [{"role": "user", "content": "fox " * 300}]}, "maximum context length is 256 tokens"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
         "Invalid JSON schema in structured_outputs.json"),
        ({"use_beam_search": True, "n": 11}, "beam_width (11) needs 22 log-probabilities"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "Unsupported content part type 'image_url'"),
        ({"messages": "hello"}, "list_type"),
        ({"add_generation_prompt": True, "continue_final_message": True}, "Cannot set both"),
        ({"chat_template": "{{ 'x' }}"}, "--trust-request-chat-template is not set"),
    ],
)
def test_bad_chat_requests_are_400(server, extra, message):
    body = {"model": SERVED_NAME, "messages": MESSAGES, **extra}
    r = httpx.post(server.url_for("v1/chat/completions"), json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-3.5-turbo", messages=MESSAGES)
