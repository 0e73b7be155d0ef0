"""LangChain's own OpenAI clients against `jaxllm serve`: `VLLMOpenAI` (completions) and `ChatOpenAI` (chat)."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("langchain_community")
pytest.importorskip("langchain_openai")

from tests.server.conftest import SERVED_NAME, RemoteServer, xla_cache_dir  # noqa: F401 - a fixture

PROMPTS = ["Rome is", "The quick brown fox", "def fibonacci(n):"]
CONVERSATION = [("system", "You are terse."), ("user", "Say hello.")]
# langchain-community's sunset notice and its pydantic-v1 style calls
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def server(tiny_model_dir, xla_cache_dir, tmp_path_factory):  # noqa: F811
    command = [sys.executable, "-m", "jaxllm.entrypoints.cli", "serve", tiny_model_dir]
    server = RemoteServer(tiny_model_dir, ["--served-model-name", SERVED_NAME], command=command,
                          xla_cache=xla_cache_dir, log_dir=tmp_path_factory.mktemp("langchain-server-logs"))
    yield server
    server.stop()


def vllm_openai(server, **kwargs):
    from langchain_community.llms import VLLMOpenAI

    return VLLMOpenAI(openai_api_key="EMPTY", openai_api_base=server.url + "/v1", model_name=SERVED_NAME,
                      max_retries=0, **kwargs)


def test_vllm_openai_groups_n_choices_per_prompt(server):
    params = dict(n=2, max_tokens=6, temperature=1.0)
    echoed = vllm_openai(server, **params, model_kwargs={"echo": True, "extra_body": {"ignore_eos": True}})
    result = echoed.generate(PROMPTS)
    assert [len(g) for g in result.generations] == [2, 2, 2]
    for prompt, group in zip(PROMPTS, result.generations):
        assert all(g.text.startswith(prompt) and len(g.text) > len(prompt) for g in group)
        assert all(g.generation_info["finish_reason"] == "length" for g in group)
    usage = result.llm_output["token_usage"]
    assert usage["completion_tokens"] == 3 * 2 * 6 and usage["total_tokens"] > usage["completion_tokens"]

    # with a seed, the batched groups are exactly what each prompt gets on its own, in order
    seeded = vllm_openai(server, **params, model_kwargs={"seed": 7, "extra_body": {"ignore_eos": True}})
    batched = [[g.text for g in group] for group in seeded.generate(PROMPTS).generations]
    alone = [[g.text for g in seeded.generate([p]).generations[0]] for p in PROMPTS]
    assert batched == alone


def test_vllm_openai_tutorial_steps(server):
    # the LangChain vLLM page: model_kwargs={"stop": ["."]}, then invoke and stream
    llm = vllm_openai(server, temperature=0, max_tokens=8, model_kwargs={"stop": ["."]})
    text = llm.invoke("Rome is")
    assert isinstance(text, str) and "." not in text
    chunks = list(vllm_openai(server, temperature=0, max_tokens=8, model_kwargs={"stop": ["."]}).stream("Rome is"))
    assert "".join(chunks) == text


def test_chat_openai_invoke_and_stream(server):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model=SERVED_NAME, base_url=server.url + "/v1", api_key="EMPTY", temperature=0,
                      max_tokens=8, max_retries=0)
    reply = chat.invoke(CONVERSATION)
    assert reply.content and reply.response_metadata["finish_reason"] in ("stop", "length")
    assert reply.usage_metadata["output_tokens"] <= 8
    chunks = list(chat.stream(CONVERSATION))
    assert len(chunks) > 1
    assert "".join(c.content for c in chunks) == reply.content


def test_served_and_in_process_models_agree(server, tiny_model_dir):
    """The same greedy text from ChatJaxLLM in-process as from ChatOpenAI over HTTP."""
    from langchain_openai import ChatOpenAI

    from jaxllm.langchain import ChatJaxLLM

    local = ChatJaxLLM(model=tiny_model_dir, temperature=0, max_new_tokens=8, ignore_eos=True,
                       engine_kwargs={"max_model_len": 128, "max_num_seqs": 8})
    remote = ChatOpenAI(model=SERVED_NAME, base_url=server.url + "/v1", api_key="EMPTY", temperature=0,
                        max_tokens=8, max_retries=0, extra_body={"ignore_eos": True})
    assert local.invoke(CONVERSATION).content == remote.invoke(CONVERSATION).content


def test_jaxllm_vllm_openai_is_the_tutorials_class(server, monkeypatch):
    """`from jaxllm.langchain import VLLMOpenAI` with the tutorial's arguments gives the community class's text;
    left out, the base URL and key come from the environment (else localhost:8000 and "EMPTY")."""
    from langchain_community.llms import VLLMOpenAI as Community

    from jaxllm.langchain import VLLMOpenAI

    args = dict(openai_api_key="EMPTY", openai_api_base=server.url + "/v1", model_name=SERVED_NAME,
                model_kwargs={"stop": ["."]}, temperature=0, max_tokens=8, max_retries=0)
    ours = VLLMOpenAI(**args)
    assert isinstance(ours, Community) and ours._llm_type == "vllm-openai"
    assert ours.invoke("Rome is") == Community(**args).invoke("Rome is")

    for name in ("OPENAI_API_BASE", "JAXLLM_API_KEY", "VLLM_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    default = VLLMOpenAI(model_name=SERVED_NAME)
    assert default.openai_api_base == "http://localhost:8000/v1" and default.openai_api_key == "EMPTY"
    monkeypatch.setenv("OPENAI_API_BASE", server.url + "/v1")
    monkeypatch.setenv("VLLM_API_KEY", "from-vllm")
    monkeypatch.setenv("JAXLLM_API_KEY", "from-jaxllm")
    from_env = VLLMOpenAI(model_name=SERVED_NAME, temperature=0, max_tokens=8, model_kwargs={"stop": ["."]},
                          max_retries=0)
    assert from_env.openai_api_key == "from-jaxllm"
    assert from_env.invoke("Rome is") == ours.invoke("Rome is")  # the server has no key: any key is accepted
