"""`jaxllm.langchain` in-process: JaxLLM / ChatJaxLLM with the real langchain-core and langchain-classic."""

from __future__ import annotations

import asyncio
import threading
import warnings

import pytest

pytest.importorskip("langchain_core")

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate

from jaxllm import BeamSearchParams, SamplingParams
from jaxllm.langchain import ChatJaxLLM, EngineDriver, JaxLLM, get_engine

ENGINE = {"max_model_len": 128, "max_num_seqs": 8}
GREEDY = {"temperature": 0.0, "max_new_tokens": 8, "ignore_eos": True}
TEMPLATE = """Question: {question}

Answer: Let's think step by step."""
QUESTION = "Who was the US president in the year the first Pokemon game was released?"
CONVERSATION = [("system", "You are terse."), ("user", "Say hello.")]


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return JaxLLM(model=tiny_model_dir, vllm_kwargs=ENGINE, **GREEDY)


@pytest.fixture(scope="module")
def engine(llm):
    return llm.client


class Recorder(BaseCallbackHandler):
    def __init__(self):
        self.events: list[str] = []
        self.tokens: list[str] = []
        self.tags: list = []

    def on_llm_start(self, serialized, prompts, **kwargs):
        self.events.append("start")
        self.tags.append(kwargs.get("tags"))

    def on_llm_new_token(self, token, **kwargs):
        self.events.append("token")
        self.tokens.append(token)

    def on_llm_end(self, response, **kwargs):
        self.events.append("end")


def test_fields_and_defaults_follow_langchain_community_vllm(llm, tiny_model_dir):
    community = pytest.importorskip("langchain_community.llms")
    for name, field in community.VLLM.model_fields.items():
        if name in ("client", "vllm_kwargs"):
            continue
        assert name in JaxLLM.model_fields, name
        assert JaxLLM.model_fields[name].default == field.default, name
    assert JaxLLM.model_fields["top_k"].default == -1 and JaxLLM.model_fields["max_new_tokens"].default == 512
    # vllm_kwargs is an alias of engine_kwargs, and reaches LLM(...): same arguments, same engine
    assert llm.engine_kwargs == ENGINE and llm.vllm_kwargs == ENGINE
    again = JaxLLM(model=tiny_model_dir, engine_kwargs=dict(ENGINE), max_new_tokens=4)
    chat = ChatJaxLLM(model=tiny_model_dir, vllm_kwargs=dict(ENGINE))
    assert again.client is llm.client is chat.client
    assert get_engine(tiny_model_dir, **again.engine_args()) is llm.client
    assert llm.client.scheduler_config.max_model_len == 128
    assert llm._llm_type == "jaxllm" and llm._identifying_params["model"] == tiny_model_dir
    assert llm.get_num_tokens("hello world") == len(llm.client.get_tokenizer().encode("hello world", add_special_tokens=False))


def test_client_takes_an_existing_llm(engine):
    model = JaxLLM(llm=engine, **GREEDY)
    assert model.client is engine
    with pytest.raises(ValueError, match="jaxllm.LLM"):
        JaxLLM(client="not an engine")


def test_invoke_matches_llm_generate(llm, engine):
    text = llm.invoke("The quick brown fox")
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    assert text == engine.generate("The quick brown fox", params, use_tqdm=False)[0].outputs[0].text
    assert len(engine.get_tokenizer().encode(text, add_special_tokens=False)) >= 1


def test_llmchain_and_lcel_chain(llm):
    from langchain_classic.chains import LLMChain

    prompt = PromptTemplate.from_template(TEMPLATE)
    expected = llm.invoke(prompt.format(question=QUESTION))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LLMChain is deprecated in favour of `prompt | llm`
        result = LLMChain(prompt=prompt, llm=llm).invoke(QUESTION)
    assert result == {"question": QUESTION, "text": expected}
    chain = prompt | llm | StrOutputParser()
    assert chain.invoke({"question": QUESTION}) == expected


def test_batch_sends_all_prompts_at_once(llm, monkeypatch):
    prompts = ["The quick brown fox", "def fibonacci(n):", "Once upon a time"]
    singles = [llm.invoke(p) for p in prompts]
    sizes = []
    submit = EngineDriver.submit

    def spy(self, client, batch, params):
        sizes.append(len(batch))
        return submit(self, client, batch, params)

    monkeypatch.setattr(EngineDriver, "submit", spy)
    assert llm.batch(prompts) == singles
    assert sizes == [3]
    result = llm.generate(prompts)
    assert [g[0].text for g in result.generations] == singles
    assert result.generations[0][0].generation_info == {"finish_reason": "length", "stop_reason": None}
    assert result.llm_output["token_usage"]["completion_tokens"] == 3 * 8


def test_per_call_overrides(llm):
    full = llm.generate(["Once upon a time"]).generations[0][0].text
    short = llm.generate(["Once upon a time"], max_new_tokens=3)
    assert short.llm_output["token_usage"]["completion_tokens"] == 3
    assert full.startswith(short.generations[0][0].text)
    stop = full[3:5]
    expected = full[: full.find(stop)]
    assert llm.invoke("Once upon a time", stop=[stop]) == expected
    assert JaxLLM(client=llm.client, stop=[stop], **GREEDY).invoke("Once upon a time") == expected
    # n sequences per prompt, with logprobs
    result = llm.generate(["Once upon a time", "def f"], n=2, temperature=0.8, seed=3, logprobs=1)
    assert [len(g) for g in result.generations] == [2, 2]
    info = result.generations[0][1].generation_info
    assert len(info["logprobs"]) == 8
    with pytest.raises(ValueError, match="LoRA"):
        llm.invoke("x", lora_request=object())


def test_stream_yields_tokens_that_join_to_the_greedy_text(llm):
    expected = llm.invoke("Once upon a time")
    chunks = list(llm.stream("Once upon a time"))
    assert len(chunks) > 1
    assert "".join(chunks) == expected
    with pytest.raises(ValueError, match="n and best_of"):
        list(llm.stream("Once upon a time", n=2, temperature=0.8))


def test_callbacks_and_tags_see_every_token(llm):
    expected = llm.invoke("Once upon a time")
    recorder = Recorder()
    streaming = JaxLLM(client=llm.client, streaming=True, callbacks=[recorder], tags=["jax"], **GREEDY)
    assert streaming.invoke("Once upon a time") == expected
    assert recorder.events[0] == "start" and recorder.events[-1] == "end"
    assert recorder.events.count("token") > 1 and "".join(recorder.tokens) == expected
    assert recorder.tags == [["jax"]]

    recorder = Recorder()
    assert "".join(llm.stream("Once upon a time", config={"callbacks": [recorder], "tags": ["t"]})) == expected
    assert recorder.events[0] == "start" and recorder.events[-1] == "end" and recorder.events.count("token") > 1


def test_abandoned_stream_is_aborted(llm, engine):
    stream = llm.stream("Once upon a time", max_new_tokens=40)
    next(stream)
    stream.close()
    assert engine.llm_engine.get_num_unfinished_requests() == 0
    assert llm.invoke("Once upon a time") == llm.invoke("Once upon a time")


def test_concurrent_streams_and_invokes_share_the_engine(llm):
    prompts = ["The quick brown fox", "def fibonacci(n):", "Once upon a time"]
    expected = llm.batch(prompts)
    results: dict[int, str] = {}

    def run(i):
        results[i] = "".join(llm.stream(prompts[i])) if i % 2 else llm.invoke(prompts[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [results[i] for i in range(3)] == expected


def test_async_paths(llm, engine):
    prompts = ["The quick brown fox", "def fibonacci(n):"]
    expected = llm.batch(prompts)
    chat = ChatJaxLLM(client=engine, **GREEDY)

    async def run():
        texts = await llm.abatch(prompts)
        streamed = [chunk async for chunk in llm.astream(prompts[0])]
        replies = await chat.abatch([CONVERSATION, CONVERSATION])
        return texts, streamed, replies

    texts, streamed, replies = asyncio.run(run())
    assert texts == expected and "".join(streamed) == expected[0] and len(streamed) > 1
    assert replies[0].content == replies[1].content == chat.invoke(CONVERSATION).content


def test_beam_search_returns_the_best_beams_generated_text(llm, engine):
    prompt = "Once upon a time"
    beams = JaxLLM(client=engine, use_beam_search=True, n=2, best_of=3, max_new_tokens=6)
    result = beams.generate([prompt])
    ref = engine.beam_search([prompt], BeamSearchParams(beam_width=3, max_tokens=6))[0].sequences
    tok = engine.get_tokenizer()
    n_prompt = len(tok(prompt).input_ids)
    expected = [tok.decode(s.tokens[n_prompt:], skip_special_tokens=True) for s in ref[:2]]
    assert [g.text for g in result.generations[0]] == expected
    assert beams.invoke(prompt) == expected[0]
    assert not beams.invoke(prompt).startswith(prompt)
    assert "".join(beams.stream(prompt)) == expected[0]
    # beam width n when best_of is unset, streamed or not
    wide = JaxLLM(client=engine, use_beam_search=True, n=3, max_new_tokens=6)
    assert "".join(wide.stream(prompt)) == wide.invoke(prompt) == expected[0]


def test_chat_model_applies_the_chat_template(llm, engine):
    chat = ChatJaxLLM(client=engine, **GREEDY)
    reply = chat.invoke([SystemMessage("You are terse."), HumanMessage("Say hello.")])
    assert isinstance(reply, AIMessage)
    conversation = [{"role": r, "content": c} for r, c in CONVERSATION]
    ref = engine.chat(conversation, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)[0]
    assert reply.content == ref.outputs[0].text
    assert reply.response_metadata["finish_reason"] == "length"
    assert reply.usage_metadata == {"input_tokens": len(ref.prompt_token_ids), "output_tokens": 8,
                                    "total_tokens": len(ref.prompt_token_ids) + 8}
    # the same through a prompt template, streamed, and batched (threads share the engine)
    chain = ChatPromptTemplate.from_messages([("system", "You are terse."), ("user", "{request}")]) | chat
    assert chain.invoke({"request": "Say hello."}).content == ref.outputs[0].text
    chunks = list(chat.stream(CONVERSATION))
    assert len(chunks) > 1 and "".join(c.content for c in chunks) == ref.outputs[0].text
    assert sum(chunks[1:], chunks[0]).usage_metadata["output_tokens"] == 8
    replies = chat.batch([CONVERSATION, [("user", "Say hello.")], CONVERSATION])
    assert replies[0].content == replies[2].content == ref.outputs[0].text
    recorder = Recorder()
    streamed = ChatJaxLLM(client=engine, streaming=True, callbacks=[recorder], **GREEDY).invoke(CONVERSATION)
    assert streamed.content == ref.outputs[0].text and recorder.events.count("token") > 1


def test_chat_template_errors_are_value_errors(engine):
    strict = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    chat = ChatJaxLLM(client=engine, chat_template=strict, **GREEDY)
    with pytest.raises(ValueError, match="System role not supported"):
        chat.invoke(CONVERSATION)
