"""Tiny tokenizers trained in-process, so tokenizer tests run offline in well under a second.

* `byte_level_bpe()`: GPT-2 style byte-level BPE. Characters outside ASCII are several bytes, and a
  small vocabulary splits them across tokens.
* `sentencepiece_bpe()`: Llama-2 style ("▁" for spaces, byte fallback `<0xNN>` tokens for characters
  missing from the vocabulary, a decoder that strips the leading space).
* `metaspace_bpe()`: the newer SentencePiece layout (Metaspace pre-tokenizer and decoder, prepend
  scheme "first"), also with byte fallback.

Both are `transformers.PreTrainedTokenizerFast` objects with `<s>` / `</s>` / `<unk>` special tokens.
"""

from __future__ import annotations

import functools
import json

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

MULTIBYTE_TEXT = "héllo wörld ✓ 日本語 🙂 naïve café — Ωmega ∑ 中文字符 😀👍"

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! This is a small corpus for a tiny tokenizer.",
    "héllo wörld, naïve café, déjà vu, über straße.",
    "日本語のテキストも少し入れます。中文也有一点。",
    "Numbers 0123456789 and symbols: ~!@#$%^&*()_+-=[]{};:'\",.<>/?",
    "Emoji 🙂 and check marks ✓ appear rarely.",
    "Stop strings like ### or END should be detected across token boundaries.",
    "def main():\n    print('hello')\n    return 0\n",
] * 4

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        clean_up_tokenization_spaces=False,
    )


@functools.cache
def _byte_level_json(vocab_size: int) -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok.to_str()


def byte_level_bpe(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Byte-level BPE: 256 byte symbols + merges learned from `CORPUS`."""
    return _wrap(Tokenizer.from_str(_byte_level_json(vocab_size)))


@functools.cache
def _sentencepiece_json(vocab_size: int, metaspace: bool) -> str:
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    if metaspace:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Sequence(
            [decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="first")]
        )
    else:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.pre_tokenizer = None
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    # Train on ASCII only, so every other character goes through the byte-fallback tokens.
    tok.train_from_iterator([line for line in CORPUS if line.isascii()], trainer)

    # Byte fallback needs the 256 `<0xNN>` pieces in the model vocabulary, right after the specials
    # (the Llama-2 layout). Merges are strings, so re-numbering the vocabulary keeps them valid.
    spec = json.loads(tok.to_str())
    learned = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    pieces = SPECIAL_TOKENS + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [p for p, _ in learned if p not in pieces]
    spec["model"]["vocab"] = {p: i for i, p in enumerate(pieces)}
    for added in spec["added_tokens"]:
        added["id"] = spec["model"]["vocab"][added["content"]]
    return json.dumps(spec)


def sentencepiece_bpe(vocab_size: int = 160) -> PreTrainedTokenizerFast:
    """Llama-2 style SentencePiece BPE with byte fallback."""
    return _wrap(Tokenizer.from_str(_sentencepiece_json(vocab_size, metaspace=False)))


def metaspace_bpe(vocab_size: int = 200) -> PreTrainedTokenizerFast:
    """SentencePiece BPE through the Metaspace pre-tokenizer / decoder, with byte fallback."""
    return _wrap(Tokenizer.from_str(_sentencepiece_json(vocab_size, metaspace=True)))


def byte_fallback_ids(tokenizer: PreTrainedTokenizerFast) -> set[int]:
    """Ids of the `<0xNN>` pieces (empty for byte-level tokenizers)."""
    vocab = tokenizer.get_vocab()
    return {vocab[f"<0x{b:02X}>"] for b in range(256) if f"<0x{b:02X}>" in vocab}
