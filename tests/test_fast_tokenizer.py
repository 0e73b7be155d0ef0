"""FastTokenizer (tokenizer.json through `tokenizers` alone) against transformers' AutoTokenizer: the same
ids, text, special tokens and chat prompts, on the embedded default model and on tiny tokenizers."""

import json
import random

import pytest
from transformers import AutoTokenizer

from jaxllm.fast_tokenizer import FastTokenizer
from jaxllm.llm import default_model_path
from jaxllm.tokenizer import IncrementalDetokenizer, get_tokenizer
from tests.conftest_tokenizers import MULTIBYTE_TEXT, byte_level_bpe, metaspace_bpe, sentencepiece_bpe

TEXTS = ["Hello world!", " leading space", "def f(x):\n    return x  # ok\n", MULTIBYTE_TEXT, "", "a  b   c\t\td",
         "<s> special </s> inside text", "It's don't we're I'm they've  ,  . ?"]
TEMPLATE = (  # the features chat templates lean on: loop controls, tojson, trim, raise_exception, generation
    "{%- for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}"
    "{%- if loop.index0 > 5 %}{% break %}{% endif %}"
    "{{ bos_token }}{{ m['role'] }}: {% generation %}{{ m['content'] | trim }}{% endgeneration %}{{ eos_token }}\n"
    "{%- endfor %}{% if tools %}TOOLS {{ tools | tojson }}{% endif %}"
    "{% if add_generation_prompt %}{{ bos_token }}assistant:{% endif %}"
)
CHATS = [
    [{"role": "user", "content": "héllo ✓"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "  and 3+3?  "}],
]


def _folders(tmp_path_factory, tiny_model_dir):
    out = {"default": default_model_path(), "tiny-llama": tiny_model_dir}
    for name, make in (("byte-level", byte_level_bpe), ("sentencepiece", sentencepiece_bpe),
                       ("metaspace", metaspace_bpe)):
        folder = tmp_path_factory.mktemp(name)
        tok = make()
        tok.chat_template = TEMPLATE
        tok.save_pretrained(folder)
        out[name] = str(folder)
    return out


@pytest.fixture(scope="module", params=["default", "tiny-llama", "byte-level", "sentencepiece", "metaspace"])
def pair(request, tmp_path_factory, tiny_model_dir):
    folder = _folders(tmp_path_factory, tiny_model_dir)[request.param]
    return get_tokenizer(folder), AutoTokenizer.from_pretrained(folder)


def test_loads_as_fast_tokenizer(pair):
    ours, ref = pair
    assert isinstance(ours, FastTokenizer) and not isinstance(ref, FastTokenizer)


def test_special_tokens_and_vocabulary(pair):
    ours, ref = pair
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert getattr(ours, name) == getattr(ref, name), name
        assert getattr(ours, name + "_id") == getattr(ref, name + "_id"), name
    assert set(ours.all_special_ids) == set(ref.all_special_ids)
    assert (ours.vocab_size, len(ours)) == (ref.vocab_size, len(ref))
    assert ours.get_vocab() == ref.get_vocab()


def test_encode_and_decode(pair):
    ours, ref = pair
    for text in TEXTS:
        for special in (True, False):
            ids = ours(text, add_special_tokens=special).input_ids
            assert ids == ref(text, add_special_tokens=special).input_ids, (text, special)
            assert ours.encode(text, add_special_tokens=special) == ids
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
        assert ours.convert_ids_to_tokens(ours.encode(text)) == ref.convert_ids_to_tokens(ref.encode(text))
    assert ours(TEXTS[:3]).input_ids == ref(TEXTS[:3]).input_ids
    long_text = " ".join(TEXTS) * 400  # tens of thousands of characters: the path that frees the GIL
    ids = ours(long_text).input_ids
    assert len(long_text) > 20_000 and ids == ref(long_text).input_ids
    assert ours.tokenize(long_text) == ref.tokenize(long_text)
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(len(ref)) for _ in range(rng.randrange(1, 30))]
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), ids


def test_streamed_text_is_the_same(pair):
    ours, ref = pair
    prompt = ref.encode("Once upon a time, ")
    output = ref.encode(MULTIBYTE_TEXT + " The end.", add_special_tokens=False)
    texts = []
    for tok in (ours, ref):
        detok = IncrementalDetokenizer(tok, prompt, skip_special_tokens=True)
        texts.append("".join(detok.add_tokens([t]) for t in output) + detok.flush())
    assert texts[0] == texts[1]


@pytest.mark.parametrize("generation, cont", [(True, False), (False, False), (False, True)])
def test_chat_template(pair, generation, cont):
    ours, ref = pair
    if ref.chat_template is None:
        pytest.skip("no chat template")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"x": "ünï"}}}]
    for chat in CHATS:
        if cont:
            chat = [*chat, {"role": "assistant", "content": "Sure, the answer is "}]
        for extra in ({}, {"tools": tools}):
            kwargs = dict(add_generation_prompt=generation, continue_final_message=cont, tokenize=False, **extra)
            assert ours.apply_chat_template(chat, **kwargs) == ref.apply_chat_template(chat, **kwargs)
        tokenized = dict(add_generation_prompt=generation, continue_final_message=cont, return_dict=True)
        expected = list(ref.apply_chat_template(chat, **tokenized)["input_ids"])
        assert ours.apply_chat_template(chat, **tokenized)["input_ids"] == expected
        assert ours.apply_chat_template(chat, add_generation_prompt=generation, continue_final_message=cont) == expected


def test_template_errors_are_template_errors(tmp_path):
    import jinja2

    tok = byte_level_bpe()
    tok.chat_template = TEMPLATE
    tok.save_pretrained(tmp_path)
    ours = get_tokenizer(str(tmp_path))
    with pytest.raises(jinja2.TemplateError, match="no tools here"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)
    assert ours.chat_template == TEMPLATE  # transformers saves it in chat_template.jinja
    with open(tmp_path / "tokenizer_config.json") as f:  # older checkpoints keep it in the config
        config = json.load(f)
    with open(tmp_path / "tokenizer_config.json", "w") as f:
        json.dump({**config, "chat_template": "{{ messages[0]['content'] }}!"}, f)
    (tmp_path / "chat_template.jinja").unlink()
    assert get_tokenizer(str(tmp_path)).apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi!"


def test_slow_mode_goes_through_transformers(tmp_path):
    byte_level_bpe().save_pretrained(tmp_path)
    assert isinstance(get_tokenizer(str(tmp_path)), FastTokenizer)
    assert not isinstance(get_tokenizer(str(tmp_path), use_fast=False), FastTokenizer)
