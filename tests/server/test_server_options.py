"""A server started the way the tutorials start vLLM in production: an API key from the environment
(`VLLM_API_KEY`, for drop-in use), a path prefix, a chat template that rejects the system role (as
Gemma's does), and a few of vLLM's frontend flags."""

from __future__ import annotations

import httpx
import openai
import pytest

KEY = "test-key-123"
NAME = "my-model"
TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n"
    "{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def server(start_server, tmp_path_factory):
    template = tmp_path_factory.mktemp("template") / "no_system.jinja"
    template.write_text(TEMPLATE)
    server = start_server(
        ["--served-model-name", NAME, "--root-path", "/llm", "--chat-template", str(template),
         "--enable-prompt-tokens-details", "--enable-request-id-headers", "--max-logprobs", "5"],
        env={"VLLM_API_KEY": KEY},
    )
    yield server
    server.stop()


def test_missing_and_wrong_key_are_401(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": KEY}):
        r = httpx.get(server.url_for("v1/models"), headers=headers)
        assert r.status_code == 401
        assert r.json() == {"error": "Unauthorized"}
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="EMPTY").models.list()


def test_right_key_works_and_scheme_is_case_insensitive(server):
    assert server.client(api_key=KEY).models.list().data[0].id == NAME
    r = httpx.get(server.url_for("v1/models"), headers={"Authorization": f"bearer {KEY}"})
    assert r.status_code == 200


def test_open_routes_need_no_key(server):
    assert httpx.get(server.url_for("health")).status_code == 200
    assert httpx.get(server.url_for("version")).status_code == 200
    assert httpx.get(server.url_for("metrics")).status_code == 200
    assert httpx.post(server.url_for("tokenize"), json={"prompt": "hi"}).status_code == 200


def test_root_path_prefix(server):
    client = openai.OpenAI(base_url=server.url + "/llm/v1", api_key=KEY, max_retries=0)
    assert client.models.list().data[0].id == NAME
    assert httpx.get(server.url_for("llm/v1/models")).status_code == 401
    assert httpx.get(server.url_for("llm/health")).status_code == 200


def test_chat_template_rejecting_system_role_is_400(server):
    client = server.client(api_key=KEY)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=NAME, max_completion_tokens=3, messages=[
            {"role": "system", "content": "You're a helpful assistant."},
            {"role": "user", "content": "Tell me in one sentence what Mexico is famous for"},
        ])
    assert info.value.status_code == 400
    assert info.value.body["message"] == "System role not supported"
    r = client.chat.completions.create(model=NAME, max_completion_tokens=3,
                                       messages=[{"role": "user", "content": "What is Mexico famous for?"}])
    assert r.choices[0].message.role == "assistant"


def test_prompt_tokens_details(server):
    client = server.client(api_key=KEY)
    r = client.completions.create(model=NAME, prompt="Hello", max_tokens=2)
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    # A long prompt sent twice: the second is served from the prefix cache, and /metrics counts it.
    prompt = "The quick brown fox jumps over the lazy dog. " * 12
    client.completions.create(model=NAME, prompt=prompt, max_tokens=2)
    again = client.completions.create(model=NAME, prompt=prompt, max_tokens=2)
    assert again.usage.prompt_tokens_details.cached_tokens >= 16
    text = httpx.get(server.url_for("/llm/metrics"), headers={"Authorization": f"Bearer {KEY}"}).text
    hits = [line for line in text.splitlines() if line.startswith("vllm:prefix_cache_hits_total")]
    assert hits and float(hits[0].split()[-1]) >= 16


def test_request_id_header(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    r = httpx.get(server.url_for("v1/models"), headers={**headers, "X-Request-Id": "abc"})
    assert r.headers["x-request-id"] == "abc"
    assert len(httpx.get(server.url_for("v1/models"), headers=headers).headers["x-request-id"]) == 32


def test_max_logprobs_flag(server):
    client = server.client(api_key=KEY)
    assert client.completions.create(model=NAME, prompt="Hello", max_tokens=2, logprobs=5).choices[0].logprobs
    with pytest.raises(openai.BadRequestError, match="max allowed: 5"):
        client.completions.create(model=NAME, prompt="Hello", max_tokens=2, logprobs=6)


def test_startup_log_says_whether_auth_is_on(server, default_server):
    assert "(API key required on /v1)" in server.log()
    assert "API key authentication is off" not in server.log()
    assert "API key authentication is off" in default_server.log()
