"""StructuredOutputsParams checks, grammar compilation errors, the grammar cache, the packed bitmask."""

import json

import numpy as np
import pytest

from jaxllm.sampling_params import GuidedDecodingParams, SamplingParams, StructuredOutputsParams
from jaxllm.structured_output.grammar_compiler import GrammarCompiler, bitmask_width
from tests.tiny_models import build_tokenizer

VOCAB = 420  # more rows than the tokenizer's ~400 tokens, as model vocabularies often have


@pytest.fixture(scope="module")
def compiler():
    tok = build_tokenizer()
    return GrammarCompiler(tok, VOCAB, [tok.eos_token_id])


def test_exactly_one_constraint():
    with pytest.raises(ValueError, match="none are specified"):
        StructuredOutputsParams()
    with pytest.raises(ValueError, match="multiple are specified: json, regex"):
        StructuredOutputsParams(json={"type": "object"}, regex="a+")
    with pytest.raises(ValueError, match="choice must be a non-empty list"):
        StructuredOutputsParams(choice=[])
    assert StructuredOutputsParams(json_object=True).kind == "json_object"


def test_sampling_params_fields_and_older_name():
    so = StructuredOutputsParams(regex="[0-9]+")
    assert SamplingParams(structured_outputs=so).structured_outputs is so
    old = GuidedDecodingParams(choice=["a", "b"], backend="xgrammar")
    assert SamplingParams(guided_decoding=old).structured_outputs is old
    assert SamplingParams(structured_outputs={"regex": "x"}).structured_outputs.regex == "x"
    with pytest.raises(ValueError, match="structured_outputs must be StructuredOutputsParams"):
        SamplingParams(structured_outputs="json")
    with pytest.raises(ValueError, match="Unknown structured_outputs field"):
        SamplingParams(structured_outputs={"jsn": {}})


def test_pydantic_model_becomes_its_schema():
    pydantic = pytest.importorskip("pydantic")

    class Point(pydantic.BaseModel):
        x: int
        y: int

    assert StructuredOutputsParams(json=Point).json["required"] == ["x", "y"]


@pytest.mark.parametrize(("params", "named"), [
    (StructuredOutputsParams(json={"type": "nope"}), "JSON schema in structured_outputs.json"),
    (StructuredOutputsParams(json="{not json"), "JSON schema in structured_outputs.json"),
    (StructuredOutputsParams(regex="a(b"), "regex in structured_outputs.regex"),
    (StructuredOutputsParams(grammar="root ::= missing"), "grammar in structured_outputs.grammar"),
])
def test_bad_specs_are_value_errors_naming_them(compiler, params, named):
    with pytest.raises(ValueError, match=f"^Invalid {named}: ") as err:
        compiler.compile(params)
    assert "/project/" not in str(err.value)  # xgrammar's source location is stripped


def test_grammars_are_compiled_once_per_schema(compiler):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    first = compiler.compile(StructuredOutputsParams(json=schema))
    # the same schema with its keys in another order, sent as a string
    again = compiler.compile(StructuredOutputsParams(json='{"required": ["a"], "type": "object", '
                                                         '"properties": {"a": {"type": "integer"}}}'))
    assert again is first
    assert compiler.compile(StructuredOutputsParams(json=schema, disable_any_whitespace=True)) is not first


def test_matcher_bitmask_allows_exactly_the_grammar(compiler):
    tok = build_tokenizer()
    matcher = compiler.matcher_for(compiler.compile(StructuredOutputsParams(choice=["hello", "world"])))
    mask = np.full((2, bitmask_width(VOCAB)), -1, np.int32)
    matcher.fill_bitmask(mask, 1)
    assert (mask[0] == -1).all()  # other rows untouched
    allowed = [t for t in range(VOCAB) if (int(mask[1, t // 32]) >> (t % 32)) & 1]
    assert allowed, "some token must start 'hello' or 'world'"
    for t in allowed:
        text = tok.decode([t])
        assert "hello".startswith(text) or "world".startswith(text), (t, text)
    for t in tok("hello", add_special_tokens=False).input_ids:
        assert matcher.accept(t)
    mask[1] = -1
    matcher.fill_bitmask(mask, 1)
    allowed = [t for t in range(VOCAB) if (int(mask[1, t // 32]) >> (t % 32)) & 1]
    assert allowed == [tok.eos_token_id]  # complete: only the end token
    assert not matcher.is_terminated and matcher.accept(tok.eos_token_id) and matcher.is_terminated


def test_structural_tag_in_vllms_response_format_shape(compiler):
    tok = build_tokenizer()
    tag = {"type": "structural_tag", "triggers": ["<f>"], "structures": [
        {"begin": "<f>", "schema": {"type": "object", "properties": {"a": {"enum": [1]}}, "required": ["a"]},
         "end": "</f>"}]}
    compiled = compiler.compile(StructuredOutputsParams(structural_tag=json.dumps(tag)))
    matcher = compiler.matcher_for(compiled)
    for t in tok('hi <f>{"a": 1}</f>', add_special_tokens=False).input_ids:
        assert matcher.accept(t)
    inside = compiler.matcher_for(compiled)  # within the tag, the schema holds
    for t in tok('hi <f>{"a": ', add_special_tokens=False).input_ids:
        assert inside.accept(t)
    assert not inside.accept(tok("2", add_special_tokens=False).input_ids[0])
    with pytest.raises(ValueError, match="Invalid structural tag"):
        compiler.compile(StructuredOutputsParams(structural_tag='{"structures": [{"begin": "x"}]}'))


def test_ids_past_the_tokenizer_are_masked_like_before():
    """A model vocabulary far larger than its tokenizer: the matchers cover the tokenizer's ids and the
    rest of each mask is zero, which allows exactly what a matcher over the whole vocabulary allows."""
    tok = build_tokenizer()
    big = len(tok) + 2000
    small_compiler = GrammarCompiler(tok, big, [tok.eos_token_id])
    assert small_compiler.grammar_vocab_size == len(tok)
    import xgrammar

    info = xgrammar.TokenizerInfo.from_huggingface(tok, vocab_size=big, stop_token_ids=[tok.eos_token_id])
    whole = xgrammar.GrammarCompiler(info)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"}}}
    ours = small_compiler.matcher_for(small_compiler.compile(StructuredOutputsParams(json=schema)))
    reference = xgrammar.GrammarMatcher(whole.compile_json_schema(json.dumps(schema)))
    rng = np.random.default_rng(0)
    for _ in range(25):
        mask = np.full((3, bitmask_width(big)), -1, np.int32)
        ours.fill_bitmask(mask, 2)
        want = np.zeros((1, bitmask_width(big)), np.int32)
        reference.fill_next_token_bitmask(want, 0)
        np.testing.assert_array_equal(mask[2], want[0])
        assert (mask[:2] == -1).all()  # other rows untouched
        bits = np.unpackbits(mask[2:3].view(np.uint8), axis=1, bitorder="little")[0, :big]
        assert not bits[len(tok):].any()
        token = int(rng.choice(np.flatnonzero(bits)))
        if token == tok.eos_token_id:
            break
        assert ours.accept(token) and reference.accept_token(token)
