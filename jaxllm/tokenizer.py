"""Tokenizer loading, incremental detokenization and stop strings.

Pure Python on top of Hugging Face `tokenizers` (a model folder with tokenizer.json loads as a
`FastTokenizer`, without transformers or torch) or `transformers` (slow mode, hub ids, folders without
tokenizer.json); the engine uses it on the host.

Streaming text, one step of one sequence::

    detok = IncrementalDetokenizer(tokenizer, prompt_token_ids, skip_special_tokens=True)
    stops = StopChecker(params.stop, params.include_stop_str_in_output)
    ...
    delta = detok.add_tokens([token_id])          # "" while a character is still incomplete
    matched = stops.append(delta, check=num_output_tokens > params.min_tokens)
    finished = matched is not None or ...         # EOS, stop token, length
    if finished:
        stops.append(detok.flush())               # an incomplete character at the end, as U+FFFD
    text = stops.get_output_text(finished, delta=params.output_kind is RequestOutputKind.DELTA)
"""

from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

logger = logging.getLogger(__name__)

REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens decoded together with the first output tokens, so that they get the spacing they have
# in context (a SentencePiece "▁word" after a prompt decodes to " word", not "word").
_PROMPT_CONTEXT_TOKENS = (5, 24)  # (fewest, most)


def get_tokenizer(
    tokenizer_name: str | os.PathLike,
    *args: Any,
    tokenizer_mode: str = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
    download_dir: str | None = None,
    **kwargs: Any,
) -> Any:
    """Load a Hugging Face tokenizer from a local directory or a Hub id (vLLM's `get_tokenizer`).

    `tokenizer_mode`: "auto"/"hf" (fast tokenizer when there is one) or "slow". Prompts are truncated
    from the left, as in vLLM. A local directory never touches the network. A local directory with a
    tokenizer.json gives a `FastTokenizer` (no transformers import); anything else goes through
    transformers' AutoTokenizer.
    """
    name = os.fspath(tokenizer_name)
    if tokenizer_mode in ("auto", "hf") and not args and kwargs.get("use_fast", True) and revision is None:
        from jaxllm.fast_tokenizer import FastTokenizer, has_tokenizer_json

        if os.path.isdir(name) and has_tokenizer_json(name):
            return FastTokenizer.from_pretrained(name, truncation_side=kwargs.get("truncation_side", "left"))
    from transformers import AutoTokenizer

    if tokenizer_mode == "slow":
        if kwargs.get("use_fast", False):
            raise ValueError("Cannot use the fast tokenizer in slow tokenizer mode.")
        kwargs["use_fast"] = False
    elif tokenizer_mode not in ("auto", "hf"):
        raise ValueError(f"Unsupported tokenizer_mode {tokenizer_mode!r}; expected 'auto', 'hf' or 'slow'.")
    kwargs.setdefault("truncation_side", "left")
    if download_dir is not None:
        kwargs.setdefault("cache_dir", download_dir)
    if os.path.isdir(name):
        kwargs.setdefault("local_files_only", True)
    # `trust_remote_code` is accepted for compatibility, but code shipped with a checkpoint is never run:
    # transformers would execute the repository's configuration/tokenizer modules (e.g. mpt-7b's auto_map).
    del trust_remote_code
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, *args, trust_remote_code=False, revision=revision, **kwargs)
    except ValueError as e:
        if "does not exist or is not currently imported" in str(e) or "requires you to execute" in str(e):
            raise ValueError(
                f"The tokenizer of {name!r} needs code shipped with the checkpoint, which jaxllm never runs. "
                "Point `tokenizer=` at a folder with a standard tokenizer.json / tokenizer_config.json."
            ) from e
        raise
    if not getattr(tokenizer, "is_fast", True):
        logger.warning("Using a slow tokenizer. This might cause a significant slowdown. "
                       "Consider using a fast tokenizer instead.")
    return tokenizer


def _make_decode_fn(
    tokenizer: Any, skip_special_tokens: bool, spaces_between_special_tokens: bool
) -> Callable[[list[int]], str]:
    """`tokenizer.decode` without clean-up of spaces (vLLM never applies it to generated text).

    For a fast tokenizer that does not override decoding, call the Rust backend directly: this is what
    `PreTrainedTokenizerFast.decode` does, minus a few microseconds of Python per call.
    """
    from jaxllm.fast_tokenizer import FastTokenizer

    backend = getattr(tokenizer, "_tokenizer", None)
    if isinstance(tokenizer, FastTokenizer):
        return lambda ids: backend.decode(ids, skip_special_tokens=skip_special_tokens)
    if backend is not None and getattr(tokenizer, "is_fast", False) and "transformers" in type(tokenizer).__module__:
        from transformers import PreTrainedTokenizerFast

        if getattr(type(tokenizer), "_decode", None) is PreTrainedTokenizerFast._decode:
            return lambda ids: backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(
            ids,
            skip_special_tokens=skip_special_tokens,
            spaces_between_special_tokens=spaces_between_special_tokens,
            clean_up_tokenization_spaces=False,
        )

    return decode


class IncrementalDetokenizer:
    """Turns a growing list of output token ids into text deltas.

    Uses the prefix/read-offset technique: keep a short window of ids that starts at the prefix offset,
    decode its settled part (`[prefix, read)`) and all of it (`[prefix, end)`), and emit the difference.
    Decoding a window rather than single tokens gets spaces right (SentencePiece) and joins characters
    whose UTF-8 bytes are spread over several tokens (byte-level BPE, byte fallback). While the decoded
    window ends in U+FFFD a character may still be incomplete, so nothing is emitted until it completes;
    `flush()` emits whatever is left once the sequence is finished.

    Byte-fallback decoders turn a whole run of `<0xNN>` pieces into U+FFFD when any byte of the run is
    invalid, so for ids that spell invalid UTF-8 with such pieces the deltas already emitted can differ
    from a later full decode; real text (valid UTF-8) is always exact.

    `output_text` is the concatenation of the deltas. With no prompt it equals
    `tokenizer.decode(output_token_ids, skip_special_tokens=..., clean_up_tokenization_spaces=False)`;
    with a prompt, `decode(prompt) + output_text == decode(prompt + output)` (so a SentencePiece output
    keeps the leading space that `decode(output)` alone would strip, as in vLLM).
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_token_ids: Sequence[int] | None = None,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self._decode = _make_decode_fn(tokenizer, skip_special_tokens, spaces_between_special_tokens)
        context = self._prompt_context([int(t) for t in (prompt_token_ids or ())])
        self._ids: list[int] = context  # the window; it starts at the prefix offset
        self._read_offset = len(context)
        self._prefix_text: str | None = None  # decode(_ids[:_read_offset]), cached
        self.output_token_ids: list[int] = []
        self.output_text = ""

    def _prompt_context(self, prompt_ids: list[int]) -> list[int]:
        """The last few prompt ids: the shortest tail (at least 5 ids) that decodes to some text with no
        U+FFFD, i.e. one that starts and ends on whole characters (special tokens may decode to "")."""
        first: tuple[list[int], str] | None = None
        for n in range(_PROMPT_CONTEXT_TOKENS[0], _PROMPT_CONTEXT_TOKENS[1] + 1):
            context = prompt_ids[-n:]
            text = self._decode(context)
            first = first or (context, text)
            if text and REPLACEMENT_CHAR not in text:
                return context
            if len(context) == len(prompt_ids):
                break
        if first is None:
            return []
        # A prompt that ends in the middle of a character would glue its bytes onto the output.
        context, text = first
        return [] if text.endswith(REPLACEMENT_CHAR) else context

    @property
    def num_pending_tokens(self) -> int:
        """Tokens received whose text has not been emitted yet."""
        return len(self._ids) - self._read_offset

    def add_tokens(self, new_token_ids: Iterable[int] | int) -> str:
        """Append token ids; return the newly decoded text ("" while a character is incomplete)."""
        if isinstance(new_token_ids, numbers.Integral):
            new_token_ids = [new_token_ids]
        new_ids = [int(t) for t in new_token_ids]
        if not new_ids:
            return ""
        self._ids.extend(new_ids)
        self.output_token_ids.extend(new_ids)
        return self._advance(final=False)

    def flush(self) -> str:
        """Emit the held-back tail (an incomplete character becomes U+FFFD). Call when finished."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read_offset == len(self._ids):
            return ""
        if self._prefix_text is None:
            self._prefix_text = self._decode(self._ids[:self._read_offset])
        prefix_len = len(self._prefix_text)
        new_text = self._decode(self._ids)
        if len(new_text) <= prefix_len or (not final and new_text.endswith(REPLACEMENT_CHAR)):
            return ""
        delta = new_text[prefix_len:]
        # The new prefix offset is the old read offset: the ids just emitted become the settled part.
        del self._ids[:self._read_offset]
        self._read_offset = len(self._ids)
        self._prefix_text = None
        self.output_text += delta
        return delta


def convert_ids_list_to_tokens(tokenizer: Any, token_ids: Sequence[int]) -> list[str]:
    """Decode each id on its own (the `decoded_token` of a `Logprob`).

    Restores leading spaces that a SentencePiece decoder strips from a lone "▁word" piece.
    """
    if not token_ids:
        return []
    raw_tokens = tokenizer.convert_ids_to_tokens(list(token_ids))
    out = []
    for tid, raw in zip(token_ids, raw_tokens):
        text = tokenizer.decode([tid]) or ""
        markers = len(raw) - len(raw.lstrip("▁")) if raw else 0
        missing = markers - (len(text) - len(text.lstrip(" ")))
        out.append(" " * missing + text if missing > 0 else text)
    return out


def check_stop_strings(
    output_text: str, new_char_count: int, stop: Sequence[str], include_stop_str_in_output: bool
) -> tuple[str, str | None]:
    """Look for stop strings that the last `new_char_count` characters completed.

    Only the tail that can hold such a match is searched (`new_char_count + len(s) - 1` characters for
    stop string `s`), so a match found in an earlier step is never found again. When several stop
    strings match, the one completed first (smallest end; then smallest start) wins, which is what
    character-by-character generation would give. Returns the text cut at the match (after the stop
    string when `include_stop_str_in_output`, before it otherwise) and the stop string, or
    `(output_text, None)`.
    """
    if new_char_count <= 0 or not stop:
        return output_text, None
    best: tuple[int, int, str] | None = None  # (end, start, stop string)
    for s in stop:
        start = output_text.find(s, max(0, len(output_text) - new_char_count - len(s) + 1))
        if start != -1 and (best is None or (start + len(s), start) < best[:2]):
            best = (start + len(s), start, s)
    if best is None:
        return output_text, None
    end, start, s = best
    return output_text[:end] if include_stop_str_in_output else output_text[:start], s


def visible_length(text_length: int, buffer_length: int, finished: bool) -> int:
    """How much of an output text of `text_length` characters may be shown: all of it once finished,
    else all but the last `buffer_length` characters (they may be the start of a stop string). A length,
    so that a stream slices only its new part and never copies the whole text."""
    if finished or buffer_length <= 0:
        return text_length
    return max(0, text_length - buffer_length)


class StopChecker:
    """The output text of one sequence, cut at the first stop string, with streaming holdback."""

    def __init__(self, stop: Sequence[str] | str | None = None, include_stop_str_in_output: bool = False):
        self.stop = [stop] if isinstance(stop, str) else list(stop or ())
        self.include_stop_str_in_output = include_stop_str_in_output
        self.output_text = ""
        self.stop_reason: str | None = None  # the matched stop string
        self._checked_len = 0  # text before this offset has been searched (or must not be)
        self._last_output_offset = 0  # for DELTA outputs

    @property
    def buffer_length(self) -> int:
        """Same as `SamplingParams.output_text_buffer_length`."""
        if self.stop and not self.include_stop_str_in_output:
            return max(len(s) for s in self.stop) - 1
        return 0

    def append(self, new_text: str, check: bool = True) -> str | None:
        """Add decoded text; return the stop string it completed, if any (the text is then cut).

        Pass `check=False` for text of tokens generated before `min_tokens` is reached: stop strings
        in it do not count, as in vLLM.
        """
        if self.stop_reason is not None:
            return None  # already stopped; later text is dropped
        self.output_text += new_text
        if not check:
            self._checked_len = len(self.output_text)
            return None
        new_chars = len(self.output_text) - self._checked_len
        self._checked_len = len(self.output_text)
        self.output_text, matched = check_stop_strings(
            self.output_text, new_chars, self.stop, self.include_stop_str_in_output
        )
        if matched is not None:
            self.stop_reason = matched
            self._checked_len = len(self.output_text)
        return matched

    def get_output_text(self, finished: bool, delta: bool = False) -> str:
        """Text to report now: cumulative (all visible text) or `delta` (visible text not yet reported).

        Once stopped the text is final, so nothing is held back.
        """
        finished = finished or self.stop_reason is not None
        visible = visible_length(len(self.output_text), self.buffer_length, finished)
        if not delta:
            return self.output_text[:visible]
        start = self._last_output_offset
        if visible <= start:
            return ""
        self._last_output_offset = visible
        return self.output_text[start:visible]
