"""The other routes: /health, /ping, /version, /v1/models, /tokenize, /detokenize, /metrics, CORS, 404s."""

from __future__ import annotations

import httpx
import pytest

import jaxllm
from tests.server.conftest import SERVED_NAME


@pytest.fixture(scope="module")
def server(default_server):
    return default_server


def test_health_ping_version(server):
    r = httpx.get(server.url_for("health"))
    assert (r.status_code, r.content) == (200, b"")
    assert httpx.get(server.url_for("ping")).status_code == 200
    assert httpx.post(server.url_for("ping")).status_code == 200
    assert httpx.get(server.url_for("version")).json() == {"version": jaxllm.__version__}


def test_models(server, tiny_model_dir):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [SERVED_NAME, "tiny-alias"]
    card = models.data[0]
    assert card.object == "model"
    assert card.owned_by == "jaxllm"
    assert card.model_extra["root"] == tiny_model_dir
    assert card.model_extra["max_model_len"] == 256
    raw = httpx.get(server.url_for("v1/models")).json()
    assert raw["object"] == "list"


def test_tokenize_prompt(server, tokenizer):
    text = "Paged attention stores keys"
    for add_special in (True, False):
        r = httpx.post(server.url_for("tokenize"), json={"model": SERVED_NAME, "prompt": text,
                                                         "add_special_tokens": add_special})
        body = r.json()
        expected = tokenizer(text, add_special_tokens=add_special).input_ids
        assert body == {"count": len(expected), "max_model_len": 256, "tokens": expected, "token_strs": None}
    r = httpx.post(server.url_for("tokenize"), json={"prompt": text, "return_token_strs": True})
    assert r.json()["token_strs"] == tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids)


def test_tokenize_chat(server, tokenizer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    for add_generation_prompt, continue_final in ((True, False), (False, True), (False, False)):
        r = httpx.post(server.url_for("tokenize"), json={
            "model": SERVED_NAME, "messages": messages, "add_generation_prompt": add_generation_prompt,
            "continue_final_message": continue_final,
        })
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                               continue_final_message=continue_final)
        assert r.json()["tokens"] == tokenizer(prompt, add_special_tokens=False).input_ids


def test_detokenize(server, tokenizer):
    ids = tokenizer("The quick brown fox").input_ids
    r = httpx.post(server.url_for("detokenize"), json={"model": SERVED_NAME, "tokens": ids})
    assert r.json() == {"prompt": tokenizer.decode(ids)}
    r = httpx.post(server.url_for("detokenize"), json={"tokens": [5, 100000]})
    assert r.status_code == 400 and "out of vocabulary" in r.json()["error"]["message"]
    r = httpx.post(server.url_for("detokenize"), json={"model": "other", "tokens": ids})
    assert r.status_code == 404


def test_metrics_names_and_counters(server):
    before = server.metrics()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
                 "vllm:time_to_first_token_seconds_count", "vllm:inter_token_latency_seconds_count",
                 "vllm:e2e_request_latency_seconds_count", "vllm:num_preemptions_total"):
        assert name in before, name
    client = server.client()
    prompt_tokens = 0
    for i in range(3):
        r = client.completions.create(model=SERVED_NAME, prompt=f"metrics {i}", max_tokens=4, temperature=0,
                                      extra_body={"ignore_eos": True})
        prompt_tokens += r.usage.prompt_tokens
    after = server.metrics()
    label = f'{{finished_reason="length",model_name="{SERVED_NAME}"}}'
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == 12
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == prompt_tokens
    assert after["vllm:request_success_total" + label] - before["vllm:request_success_total" + label] == 3
    ttft = "vllm:time_to_first_token_seconds_count"
    assert after[ttft] - before[ttft] == 3
    assert after["vllm:num_requests_running"] == 0
    assert after["vllm:kv_cache_usage_perc"] == 0


def test_metrics_content_type_and_labels(server):
    r = httpx.get(server.url_for("metrics"))
    assert r.headers["content-type"].startswith("text/plain")
    assert f'vllm:num_requests_running{{model_name="{SERVED_NAME}"}}' in r.text


def test_unknown_route_is_404_in_openai_shape(server):
    r = httpx.get(server.url_for("v1/nothing-here"))
    assert r.status_code == 404
    assert r.json()["error"]["code"] == 404


def test_cors_preflight(server):
    r = httpx.options(server.url_for("v1/completions"), headers={
        "Origin": "http://example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] in ("*", "http://example.com")
