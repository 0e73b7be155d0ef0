"""Schemathesis against the server's own OpenAPI schema (/openapi.json), over loopback.

Every operation gets schema-valid and schema-violating requests (bounded: see `_SETTINGS`). Checked for
each answer: no 5xx, the status code and content type are documented, a JSON body matches the documented
schema, and no answer takes longer than the per-request timeout (a hang fails the test). At the end the
server still answers a plain request and no KV block is left in use.

The engine behind the server is the real `LLMEngine` (scheduler, detokenizer, stop strings, logprobs,
beam search) over the tiny model's tokenizer, with a fake runner so that every fuzzed generation takes
milliseconds. Limits keep the generated work small (`--max-n 4`).

Not checked: that schema-violating requests are refused (the server coerces types leniently and ignores
unknown fields, like vLLM), and that schema-valid requests are accepted (the schema cannot express
cross-field rules such as `max_tokens` + prompt <= max_model_len; those are 400s with a message).
"""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from jaxllm.entrypoints.openai.protocol import CompletionStreamResponse, ErrorResponse
from tests.hardening.conftest import examples
from tests.hardening.servers import ThreadServer, fake_llm_engine, server_args

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
REQUEST_TIMEOUT = 30.0  # seconds; no fuzzed request may take this long


@pytest.fixture(scope="module")
def fuzz_server(tiny_model_dir):
    engine = fake_llm_engine(tiny_model_dir, max_num_seqs=16)
    server = ThreadServer(server_args(tiny_model_dir, "--served-model-name", "tiny", "--max-n", "4",
                                      "--max-request-body-bytes", "65536"),
                          engine, engine.tokenizer)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


# Every operation of /openapi.json (test_operations_are_all_fuzzed keeps the list complete).
OPERATIONS = [
    ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("POST", "/tokenize"), ("POST", "/detokenize"),
    ("GET", "/v1/models"), ("GET", "/health"), ("GET", "/ping"), ("POST", "/ping"), ("GET", "/version"),
    ("GET", "/metrics"),
]
_GENERATION = {"/v1/completions": 4, "/v1/chat/completions": 4, "/tokenize": 2, "/detokenize": 2}


def test_operations_are_all_fuzzed(api_schema):
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


def check_stream(response) -> None:
    """An event stream's payloads: chunks in the documented shape, no 5xx error, and [DONE] last."""
    content_type = response.headers.get("content-type") or [""]  # schemathesis: a list per header
    if not str(content_type[0] if isinstance(content_type, list) else content_type).startswith("text/event-stream"):
        return
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", events[-3:]
    for event in events[:-1]:
        body = json.loads(event)
        if "error" in body:
            error = ErrorResponse.model_validate(body).error
            assert error.code < 500, f"a server error inside a stream: {error}"
        elif body.get("object") == "chat.completion.chunk":
            assert {"id", "created", "model", "choices"} <= set(body)
            for choice in body["choices"]:
                assert isinstance(choice["index"], int) and isinstance(choice["delta"], dict)
        else:
            CompletionStreamResponse.model_validate(body)


def plausible(case, choice: int):
    """Most schema-valid bodies name an unknown model or omit the prompt (400s and 404s before any
    generation); give some of them the served name and a prompt so that they reach the engine."""
    body = case.body
    if choice and isinstance(body, dict):
        body["model"] = "tiny" if choice % 2 else None
        if case.path == "/v1/completions" and not body.get("prompt"):
            body["prompt"] = "Hello world" if choice == 1 else [1, 2, 3]
    return case


@pytest.mark.parametrize("method, path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api_answers_every_request_by_its_schema(api_schema, method, path):
    operation = api_schema[path][method]
    strategy = st.one_of(
        st.builds(plausible, operation.as_strategy(GenerationMode.POSITIVE), st.integers(0, 3)),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @settings(max_examples=examples(10 * _GENERATION.get(path, 1)), suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case):
        response = case.call(timeout=REQUEST_TIMEOUT)
        case.validate_response(response, checks=CHECKS)
        check_stream(response)

    run()


def test_server_is_healthy_and_clean_after_fuzzing(fuzz_server):
    fuzz_server.wait_idle()
    assert fuzz_server.kv_blocks_in_use() == 0
    assert httpx.get(fuzz_server.url + "/health").status_code == 200
    r = fuzz_server.post("/v1/completions", {"prompt": "hello", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
