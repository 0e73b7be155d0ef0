"""`FastTokenizer`: a model's `tokenizer.json` through the `tokenizers` library alone, with the part of the
Hugging Face tokenizer interface jaxllm and its users call (`tok(text).input_ids`, `encode`, `decode`,
`convert_ids_to_tokens`, special tokens and their ids, `apply_chat_template`).

Loading it imports neither transformers nor torch: a fraction of a second, where `AutoTokenizer` takes
seconds. The special tokens, chat template and length limits come from `tokenizer_config.json` (and
`special_tokens_map.json`, `chat_template.jinja` when present), as transformers reads them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# transformers' clean-up of spaces before punctuation and contractions, applied when the config asks for it.
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


_LONG_TEXT = 8192  # characters (or token ids) from which (de)tokenizing goes through the batch calls


class Encoding(dict):
    """What calling the tokenizer returns: `input_ids` and `attention_mask`, as keys and as attributes."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _token_text(value: Any) -> str | None:
    """A special token from a config: a string, or a serialized AddedToken ({"content": ...})."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def has_tokenizer_json(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "tokenizer.json"))


class FastTokenizer:
    """A Rust `tokenizers.Tokenizer` with Hugging Face's tokenizer interface (the part text serving uses)."""

    is_fast = True

    def __init__(self, backend, config: dict | None = None, name_or_path: str = "",
                 chat_template: str | dict[str, str] | None = None, truncation_side: str = "right"):
        config = config or {}
        self._tokenizer = backend
        self.name_or_path = name_or_path
        self.chat_template = chat_template if chat_template is not None else config.get("chat_template")
        if isinstance(self.chat_template, list):  # [{"name": ..., "template": ...}, ...]
            self.chat_template = {t["name"]: t["template"] for t in self.chat_template}
        self.model_max_length = int(config.get("model_max_length") or 10**30)
        self.truncation_side = truncation_side  # vLLM truncates prompts from the left, whatever the config says
        self.padding_side = config.get("padding_side", "right")
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        for name in SPECIAL_NAMES:
            setattr(self, name, _token_text(config.get(name)))
        self.additional_special_tokens = [_token_text(t) for t in config.get("additional_special_tokens") or []]

    @classmethod
    def from_pretrained(cls, folder: str, truncation_side: str = "right") -> FastTokenizer:
        """Load the tokenizer of a model folder (it must hold tokenizer.json)."""
        from tokenizers import Tokenizer

        folder = os.fspath(folder)
        backend = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        config = {**_read_json(os.path.join(folder, "special_tokens_map.json")),
                  **_read_json(os.path.join(folder, "tokenizer_config.json"))}
        template = None
        jinja = os.path.join(folder, "chat_template.jinja")
        if os.path.isfile(jinja):
            with open(jinja, encoding="utf-8") as f:
                template = f.read()
        elif os.path.isfile(os.path.join(folder, "chat_template.json")):
            template = _read_json(os.path.join(folder, "chat_template.json")).get("chat_template")
        return cls(backend, config, name_or_path=folder, chat_template=template, truncation_side=truncation_side)

    # ---- vocabulary and special tokens -----------------------------------------------------------

    @property
    def backend_tokenizer(self):
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """The base vocabulary, without added tokens (as Hugging Face's `vocab_size`)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def get_added_vocab(self) -> dict[str, int]:
        return {t.content: i for i, t in self._tokenizer.get_added_tokens_decoder().items()}

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._tokenizer.token_to_id(token)

    bos_token_id = property(lambda self: self._id(self.bos_token))
    eos_token_id = property(lambda self: self._id(self.eos_token))
    unk_token_id = property(lambda self: self._id(self.unk_token))
    pad_token_id = property(lambda self: self._id(self.pad_token))
    sep_token_id = property(lambda self: self._id(self.sep_token))
    cls_token_id = property(lambda self: self._id(self.cls_token))
    mask_token_id = property(lambda self: self._id(self.mask_token))

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {n: getattr(self, n) for n in SPECIAL_NAMES if getattr(self, n) is not None}
        if self.additional_special_tokens:
            out["additional_special_tokens"] = list(self.additional_special_tokens)
        return out

    @property
    def all_special_tokens(self) -> list[str]:
        named = [getattr(self, n) for n in SPECIAL_NAMES if getattr(self, n) is not None]
        added = [t.content for t in self._tokenizer.get_added_tokens_decoder().values() if t.special]
        return list(dict.fromkeys([*named, *self.additional_special_tokens, *added]))

    @property
    def all_special_ids(self) -> list[int]:
        return [i for i in (self._id(t) for t in self.all_special_tokens) if i is not None]

    # ---- text -> ids -----------------------------------------------------------------------------

    def _encoding(self, text: str, add_special_tokens: bool):
        # `encode_batch` lets other Python threads run while it works; `encode` may hold the GIL throughout,
        # which would stall a server's event loop for seconds on a long text.
        if len(text) < _LONG_TEXT:
            return self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return self._tokenizer.encode_batch([text], add_special_tokens=add_special_tokens)[0]

    def _ids(self, text: str, add_special_tokens: bool, truncation: bool, max_length: int | None) -> list[int]:
        ids = self._encoding(text, add_special_tokens).ids
        limit = max_length if max_length is not None else (self.model_max_length if truncation else None)
        if truncation and limit is not None and len(ids) > limit:
            ids = ids[len(ids) - limit:] if self.truncation_side == "left" else ids[:limit]
        return ids

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True, truncation: bool = False,
                 max_length: int | None = None, **kwargs: Any) -> Encoding:
        if isinstance(text, str):
            ids = self._ids(text, add_special_tokens, truncation, max_length)
            return Encoding(input_ids=ids, attention_mask=[1] * len(ids))
        rows = [self._ids(t, add_special_tokens, truncation, max_length) for t in text]
        return Encoding(input_ids=rows, attention_mask=[[1] * len(r) for r in rows])

    def encode(self, text: str, add_special_tokens: bool = True, truncation: bool = False,
               max_length: int | None = None, **kwargs: Any) -> list[int]:
        return self._ids(text, add_special_tokens, truncation, max_length)

    def tokenize(self, text: str, add_special_tokens: bool = False, **kwargs: Any) -> list[str]:
        return self._encoding(text, add_special_tokens).tokens

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]):
        if isinstance(tokens, str):
            found = self._tokenizer.token_to_id(tokens)
            return found if found is not None else self.unk_token_id
        return [self.convert_tokens_to_ids(t) for t in tokens]

    # ---- ids -> text -----------------------------------------------------------------------------

    def decode(self, token_ids: int | Sequence[int], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None, **kwargs: Any) -> str:
        ids = [int(token_ids)] if isinstance(token_ids, int) else [int(t) for t in token_ids]
        if len(ids) < _LONG_TEXT:
            text = self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        else:  # as for encoding: the batch call lets other threads run
            text = self._tokenizer.decode_batch([ids], skip_special_tokens=skip_special_tokens)[0]
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        if clean:
            for before, after in _CLEANUP:
                text = text.replace(before, after)
        return text

    def batch_decode(self, sequences: Sequence[Sequence[int]], **kwargs: Any) -> list[str]:
        return [self.decode(s, **kwargs) for s in sequences]

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(int(i)) for i in ids if int(i) not in special]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        return self._tokenizer.decoder.decode(list(tokens)) if self._tokenizer.decoder else "".join(tokens)

    # ---- chat ------------------------------------------------------------------------------------

    def apply_chat_template(self, conversation: list[dict] | list[list[dict]], tools: list | None = None,
                            documents: list | None = None, chat_template: str | None = None,
                            add_generation_prompt: bool = False, continue_final_message: bool = False,
                            tokenize: bool = True, return_dict: bool = False, **kwargs: Any):
        """The prompt of a conversation (or of each of a list of them): text, or with `tokenize` its ids
        (an Encoding with `input_ids` and `attention_mask` when `return_dict`)."""
        from jaxllm.chat_template import render, select_template

        for key in ("return_tensors", "padding", "truncation", "max_length", "tokenizer_kwargs"):
            kwargs.pop(key, None)
        source = select_template(self.chat_template, chat_template, tools)
        batch = bool(conversation) and isinstance(conversation[0], (list, tuple))
        texts = [
            render(source, list(c), tools=tools, documents=documents, add_generation_prompt=add_generation_prompt,
                   continue_final_message=continue_final_message, special_tokens=self.special_tokens_map, **kwargs)
            for c in (conversation if batch else [conversation])
        ]
        if not tokenize:
            return texts if batch else texts[0]
        if return_dict:
            return self(texts if batch else texts[0], add_special_tokens=False)
        ids = [self.encode(t, add_special_tokens=False) for t in texts]
        return ids if batch else ids[0]

    def __repr__(self) -> str:
        return f"FastTokenizer(name_or_path={self.name_or_path!r}, vocab_size={len(self)})"
