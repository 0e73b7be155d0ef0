"""`LLM.generate` under structured outputs on a tiny random Llama, whose text is garbage unless constrained."""

import json
import re

import jsonschema_rs
import pytest

from jaxllm import LLM, SamplingParams
from jaxllm.sampling_params import GuidedDecodingParams, StructuredOutputsParams

PROMPTS = ["hello world", "The quick brown fox", "def fibonacci(n):", "import os"]

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "score": {"type": "number", "minimum": -1.5, "maximum": 2.5},
        "colour": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 1, "maxItems": 3},
        "owner": {
            "type": "object",
            "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 9}, "admin": {"type": "boolean"}},
            "required": ["id", "admin"],
        },
    },
    "required": ["name", "age", "score", "colour", "tags", "owner"],
}


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(tiny_model_dir, max_model_len=256, max_num_seqs=8)


def _parse(text: str):
    # xgrammar's JSON strings admit raw control characters, which a random model does produce
    return json.loads(text, strict=False)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_outputs_parse_and_validate(llm, temperature):
    so = StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True)
    sp = SamplingParams(temperature=temperature, max_tokens=200, seed=7, structured_outputs=so)
    outs = llm.generate(PROMPTS, sp, use_tqdm=False)
    for out in outs:
        c = out.outputs[0]
        assert c.finish_reason == "stop", c.text
        value = _parse(c.text)
        jsonschema_rs.validate(SCHEMA, value)
        assert list(value) == list(SCHEMA["properties"])  # compact, in schema order


def test_json_object_with_default_whitespace(llm):
    sp = SamplingParams(temperature=1.0, max_tokens=150, seed=3,
                        structured_outputs=StructuredOutputsParams(json_object=True))
    outs = llm.generate(PROMPTS, sp, use_tqdm=False)
    finished = [o.outputs[0] for o in outs if o.outputs[0].finish_reason == "stop"]
    assert finished, "whitespace may run to max_tokens, but not for every prompt"
    for c in finished:
        assert isinstance(_parse(c.text), dict)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_regex_and_choice_outputs_match(llm, temperature):
    regex = r"[a-z]{2,5}-\d{3}(\.[A-Z])?"
    choices = ["positive", "negative", "neutral ☺"]
    sps = [  # penalties and top-k / top-p filters combine with the mask: never an unmasked token
        SamplingParams(temperature=temperature, max_tokens=40, seed=1, top_k=20, top_p=0.9, repetition_penalty=1.3,
                       structured_outputs=StructuredOutputsParams(regex=regex)),
        SamplingParams(temperature=temperature, max_tokens=40, seed=2, guided_decoding=GuidedDecodingParams(choice=choices)),
    ]
    outs = llm.generate(PROMPTS[:2] * 2, sps * 2, use_tqdm=False)
    for i, out in enumerate(outs):
        c = out.outputs[0]
        assert c.finish_reason == "stop"
        if i % 2 == 0:
            assert re.fullmatch(regex, c.text), c.text
        else:
            assert c.text in choices


def test_grammar(llm):
    grammar = 'root ::= "(" expr ")"\nexpr ::= [0-9] | [0-9] " + " expr'
    sp = SamplingParams(temperature=1.0, max_tokens=60, seed=5, structured_outputs=StructuredOutputsParams(grammar=grammar))
    language = r"\((\d \+ )*\d\)"
    for out in llm.generate(PROMPTS, sp, use_tqdm=False):
        c = out.outputs[0]
        if c.finish_reason == "stop":
            assert re.fullmatch(language, c.text), c.text
        else:  # the random model may keep adding terms until max_tokens: a prefix of the language
            assert c.finish_reason == "length"
            assert any(re.fullmatch(language, c.text + end) for end in (")", "0)", " 0)", "+ 0)", " + 0)")), c.text


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_unconstrained_rows_are_unchanged_by_constrained_neighbours(llm, temperature):
    free = SamplingParams(temperature=temperature, max_tokens=24, seed=11, ignore_eos=True)
    alone = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, free, use_tqdm=False)]
    constrained = SamplingParams(temperature=temperature, max_tokens=60, seed=3,
                                 structured_outputs=StructuredOutputsParams(regex=r"\d{1,3}(, \d{1,3}){2,9}"))
    prompts = [p for pair in zip(PROMPTS, PROMPTS[::-1]) for p in pair]
    mixed = llm.generate(prompts, [free, constrained] * len(PROMPTS), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in mixed[::2]] == alone
    for o in mixed[1::2]:
        assert re.fullmatch(r"\d{1,3}(, \d{1,3}){2,9}", o.outputs[0].text)
    # the garbage the model writes unconstrained does not follow the regex
    assert not any(re.fullmatch(r"\d{1,3}(, \d{1,3}){2,9}", o.outputs[0].text)
                   for o in llm.generate(PROMPTS, free, use_tqdm=False))


def test_n_sequences_each_follow_the_grammar(llm):
    sp = SamplingParams(n=3, temperature=1.0, max_tokens=20, seed=9,
                        structured_outputs=StructuredOutputsParams(regex=r"[A-Z][a-z]{1,6}"))
    (out,) = llm.generate("hello", sp, use_tqdm=False)
    assert len(out.outputs) == 3
    assert all(re.fullmatch(r"[A-Z][a-z]{1,6}", c.text) for c in out.outputs)


def test_bad_schema_is_a_value_error_and_queues_nothing(llm):
    bad = SamplingParams(structured_outputs=StructuredOutputsParams(json={"type": "object", "properties": 3}))
    with pytest.raises(ValueError, match="Invalid JSON schema in structured_outputs.json"):
        llm.generate("hello", bad, use_tqdm=False)
    assert llm.generate("hello", SamplingParams(max_tokens=2), use_tqdm=False)[0].finished


def test_chat_template_receives_tools_and_a_call_can_be_constrained(llm):
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"tz": {"enum": ["CET", "UTC"]}}, "required": ["tz"]}}}]
    template = ("{% for t in tools %}tool {{ t.function.name }}\n{% endfor %}"
                "{% for m in messages %}{{ m.content }}\n{% endfor %}")
    so = StructuredOutputsParams(json=tools[0]["function"]["parameters"], disable_any_whitespace=True)
    (out,) = llm.chat([{"role": "user", "content": "time?"}], SamplingParams(temperature=0, max_tokens=30,
                      structured_outputs=so), chat_template=template, tools=tools, use_tqdm=False)
    assert out.prompt == "tool get_time\ntime?\n"
    assert json.loads(out.outputs[0].text)["tz"] in ("CET", "UTC")


def test_templates_read_earlier_tool_calls_as_dicts(llm):
    template = ("{% for m in messages %}{{ m.role }}:{% for c in m.tool_calls or [] %}"
                "{{ c.function.name }}({{ c.function.arguments.city }}){% endfor %}{{ m.content or '' }}\n{% endfor %}")
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    (out,) = llm.chat(messages, SamplingParams(max_tokens=1), chat_template=template, use_tqdm=False)
    assert out.prompt == "user:Weather?\nassistant:get_weather(Oslo)\ntool:sunny\n"
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Oslo"}'  # the caller's dict is untouched
