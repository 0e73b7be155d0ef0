"""The byte-level BPE tokenizer and the token streams it makes of the corpus."""

from __future__ import annotations

import numpy as np

from tiny_model.chat_format import ASSISTANT, BOS, CHAT_TEMPLATE, EOS, PAD, SPECIAL_TOKENS, SYSTEM, USER


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return tok


def wrap_tokenizer(tok, max_len: int):
    from transformers import PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens={"system_token": SYSTEM, "user_token": USER, "assistant_token": ASSISTANT},
        model_max_length=max_len,
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def encode_stream(tok, docs: list[str], bos_id: int, eos_id: int) -> np.ndarray:
    """Concatenate ``<s> doc </s>`` for every document into one token stream.
    Chat documents already carry their own ``<s>`` and ``</s>`` tokens."""
    encodings = tok.encode_batch(docs, add_special_tokens=False)
    parts = []
    for doc, enc in zip(docs, encodings):
        ids = enc.ids
        if doc.startswith(BOS):
            parts.append(np.asarray(ids, dtype=np.int32))
        else:
            parts.append(np.asarray([bos_id, *ids, eos_id], dtype=np.int32))
    return np.concatenate(parts) if parts else np.zeros((0,), np.int32)


def split_space_prefixed(stream: np.ndarray, tok, prob: float, seed: int) -> np.ndarray:
    """Write a random fraction of the tokens ' word' as ' ' followed by 'word'.

    Byte-level BPE attaches a space to the word after it, so a prompt that ends
    with a space ("def ", "class ") ends with a lone space token that the plain
    corpus almost never contains. Seeing that split now and then teaches the
    model to continue such prompts."""
    if prob <= 0:
        return stream
    vocab = tok.get_vocab()
    space = "\u0120"  # byte-level symbol of " "
    space_id = vocab[space]
    rest_of = np.full(len(vocab), -1, dtype=np.int64)
    for token, idx in vocab.items():
        rest = token[1:]
        if token.startswith(space) and rest and not rest.startswith(space) and rest in vocab:
            rest_of[idx] = vocab[rest]
    rng = np.random.default_rng([seed, 1])
    chosen = np.nonzero((rest_of[stream] >= 0) & (rng.random(len(stream)) < prob))[0]
    out = stream.copy()
    out[chosen] = rest_of[stream[chosen]]
    return np.insert(out, chosen, space_id).astype(np.int32)
