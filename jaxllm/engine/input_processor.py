"""Prompts in: text or token ids checked and tokenized, bad words turned into token ids."""

from __future__ import annotations

from typing import Any


class InputProcessor:
    def __init__(self, tokenizer: Any, vocab_size: int):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size

    def tokenize_prompt(self, prompt: Any) -> tuple[str | None, list[int]]:
        """(prompt text or None, token ids) from a str, {"prompt": str} or {"prompt_token_ids": [...]}."""
        if isinstance(prompt, str):
            text, ids = prompt, None
        elif isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            text, ids = prompt.get("prompt"), prompt["prompt_token_ids"]
        elif isinstance(prompt, dict) and "prompt" in prompt:
            text, ids = prompt["prompt"], None
            if not isinstance(text, str):
                raise ValueError(f"prompt must be a string, got {type(text).__name__}.")
        else:
            raise ValueError(
                "Each prompt must be a str, {'prompt': str} or {'prompt_token_ids': list[int]}; "
                f"got {type(prompt).__name__}."
            )
        if ids is None:
            if self.tokenizer is None:
                raise ValueError("Text prompts need a tokenizer; pass prompt_token_ids instead.")
            ids = self.tokenizer(text).input_ids
        ids = list(ids)
        vocab = self.vocab_size
        # Plain ints in range (the common case, checked at C speed); otherwise find the first bad one.
        if ids and (set(map(type, ids)) != {int} or min(ids) < 0 or max(ids) >= vocab):
            for t in ids:
                if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
                    raise ValueError(f"Token id {t!r} in prompt_token_ids is out of vocabulary (size {vocab}).")
        return text, ids

    def bad_words_ids(self, words) -> list[list[int]]:
        """The token ids of each bad word, alone and after a space (as vLLM bans them)."""
        if not words or self.tokenizer is None:
            return []
        out = []
        for word in words:
            for variant in (word, " " + word.lstrip()):
                ids = self.tokenizer(variant, add_special_tokens=False).input_ids
                if ids and ids not in out:
                    out.append(ids)
        return out
