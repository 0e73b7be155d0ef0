"""`IncrementalDetokenizer` on random token sequences, fed in random chunks, equals a full decode.

* byte-level BPE: any ids at all (special tokens, bytes that are not valid UTF-8), with or without a
  prompt: the streamed text is `decode(output)`;
* SentencePiece layouts with byte fallback (Llama-2 style and Metaspace): ids that spell real text (whole
  pieces, special tokens, and characters spelled as `<0xNN>` byte pieces): `decode(prompt) + text ==
  decode(prompt + output)`. (Byte-fallback decoders turn a whole run of byte pieces into U+FFFD when one
  byte of it is invalid, so for invalid UTF-8 the streamed text may differ, as documented in tokenizer.py.)

In every case the deltas concatenate to `output_text`, and text streamed before the end never ends in a
partial character (no U+FFFD is emitted for text that has none).
"""

from __future__ import annotations

import functools

from hypothesis import given, settings
from hypothesis import strategies as st

from jaxllm.tokenizer import REPLACEMENT_CHAR, IncrementalDetokenizer
from tests.conftest_tokenizers import byte_fallback_ids, byte_level_bpe, metaspace_bpe, sentencepiece_bpe
from tests.hardening.conftest import examples

CHARS = "abcdefghij XYZ.,!?\néöüßçñΩπ∑—✓日本語中文字符のテキスト🙂😀👍🚀"


def decode(tok, ids, skip=True) -> str:
    return tok.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)


def stream(tok, ids, chunks, prompt=(), skip=True) -> tuple[list[str], IncrementalDetokenizer]:
    detok = IncrementalDetokenizer(tok, list(prompt), skip_special_tokens=skip)
    deltas, i, c = [], 0, 0
    while i < len(ids):
        step = chunks[c % len(chunks)] if chunks else 1
        deltas.append(detok.add_tokens(ids[i:i + step]))
        i, c = i + step, c + 1
    deltas.append(detok.flush())
    assert "".join(deltas) == detok.output_text
    assert detok.output_token_ids == list(ids)
    return deltas, detok


@functools.cache
def tokenizer(name: str):
    return {"byte_level": byte_level_bpe, "sentencepiece": sentencepiece_bpe, "metaspace": metaspace_bpe}[name]()


@functools.cache
def pieces(name: str) -> tuple[list[int], list[int], dict[str, list[int]]]:
    """(whole pieces, special ids, {char: ids spelling it}) of a tokenizer."""
    tok = tokenizer(name)
    byte_ids, special = byte_fallback_ids(tok), list(tok.all_special_ids)
    whole = [i for i in range(len(tok))
             if i not in byte_ids and i not in special and REPLACEMENT_CHAR not in decode(tok, [i])]
    vocab = tok.get_vocab()
    spelled = {c: [vocab[f"<0x{b:02X}>"] for b in c.encode()] if byte_ids else tok.encode(c, add_special_tokens=False)
               for c in CHARS}
    return whole, special, spelled


@st.composite
def text_ids(draw, name: str, max_items: int = 40) -> list[int]:
    """Ids a model could emit for real text: whole pieces, special tokens, characters spelled in bytes."""
    whole, special, spelled = pieces(name)
    items = draw(st.lists(st.one_of(
        st.sampled_from(whole).map(lambda i: [i]),
        st.sampled_from(special).map(lambda i: [i]),
        st.sampled_from(sorted(spelled)).map(lambda c: spelled[c]),
    ), max_size=max_items))
    return [i for item in items for i in item]


chunks = st.lists(st.integers(1, 4), min_size=1, max_size=5)


@settings(max_examples=examples(150))
@given(data=st.data(), skip=st.booleans(), chunking=chunks)
def test_byte_level_any_ids_equal_full_decode(data, skip, chunking):
    tok = tokenizer("byte_level")
    ids = data.draw(st.lists(st.integers(0, len(tok) - 1), max_size=60), label="ids")
    prompt = data.draw(st.one_of(st.just([]), text_ids("byte_level", 10),
                                 st.lists(st.integers(0, len(tok) - 1), max_size=12)), label="prompt")
    deltas, detok = stream(tok, ids, chunking, prompt, skip)
    assert detok.output_text == decode(tok, ids, skip)
    full = decode(tok, ids, skip)
    if REPLACEMENT_CHAR not in full:
        assert all(not d.endswith(REPLACEMENT_CHAR) for d in deltas)


@settings(max_examples=examples(150))
@given(data=st.data(), name=st.sampled_from(["byte_level", "sentencepiece", "metaspace"]), skip=st.booleans(),
       chunking=chunks)
def test_text_ids_after_a_prompt_equal_full_decode(data, name, skip, chunking):
    tok = tokenizer(name)
    prompt = data.draw(text_ids(name, 12), label="prompt")
    ids = data.draw(text_ids(name), label="ids")
    deltas, detok = stream(tok, ids, chunking, prompt, skip)
    assert decode(tok, prompt, skip) + detok.output_text == decode(tok, prompt + ids, skip)
    if not prompt:
        assert detok.output_text == decode(tok, ids, skip)
    assert all(REPLACEMENT_CHAR not in d for d in deltas)
