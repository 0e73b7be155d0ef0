"""`GrammarCompiler`: a request's `StructuredOutputsParams` -> an xgrammar grammar compiled against the
tokenizer's vocabulary, once per distinct constraint (an LRU cache in front of xgrammar's own).

Compiling a JSON schema walks every vocabulary token against the grammar (milliseconds to seconds);
the next request with the same schema gets the compiled grammar from the cache.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any

from jaxllm.structured_output.matcher import StructuredOutputMatcher
from jaxllm.structured_output.params import StructuredOutputsParams

_CACHE_SIZE = 256
_NATIVE_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # "[13:30:52] /project/cpp/x.cc:94: " on xgrammar errors
_WHAT = {
    "json": "JSON schema",
    "regex": "regex",
    "choice": "choice list",
    "grammar": "grammar",
    "json_object": "JSON object grammar",
    "structural_tag": "structural tag",
}


def bitmask_width(vocab_size: int) -> int:
    """int32 words per row of a packed token bitmask (bit j of word i allows token 32 * i + j)."""
    return (vocab_size + 31) // 32


def _as_transformers(tokenizer: Any) -> Any:
    """xgrammar reads vocabularies from transformers tokenizers: jaxllm's own fast tokenizer is wrapped
    around the same `tokenizers` backend (xgrammar imports transformers itself, so this costs nothing)."""
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

    if isinstance(tokenizer, PreTrainedTokenizerBase) or not hasattr(tokenizer, "backend_tokenizer"):
        return tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)


class GrammarCompiler:
    """Compiles and caches grammars for one tokenizer and one model vocabulary size."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int], max_threads: int = 2):
        import xgrammar

        if tokenizer is None:
            raise ValueError("Structured outputs need a tokenizer.")
        self._xgr = xgrammar
        self.vocab_size = vocab_size
        hf = _as_transformers(tokenizer)
        # Ids past the tokenizer's (padding rows of the embedding) have no text: a grammar never allows
        # them, so its matchers cover the tokenizer's ids and the masks' other words are zeroed. Left to
        # xgrammar as textless special tokens they cost it time on every token (30 us an accepted token
        # with 148k of them, against 2 us without).
        self.grammar_vocab_size = min(vocab_size, max(len(hf), max(stop_token_ids, default=-1) + 1))
        info = xgrammar.TokenizerInfo.from_huggingface(
            hf, vocab_size=self.grammar_vocab_size, stop_token_ids=sorted(stop_token_ids)
        )
        self._compiler = xgrammar.GrammarCompiler(info, max_threads=max_threads)
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def matcher_for(self, compiled: Any) -> StructuredOutputMatcher:
        """A fresh matcher at the start of a grammar from `compile`."""
        return StructuredOutputMatcher(self._xgr.GrammarMatcher(compiled), bitmask_width(self.grammar_vocab_size))

    def compile(self, params: StructuredOutputsParams) -> Any:
        """The compiled grammar of `params` (cached). Raises ValueError naming a bad schema or grammar."""
        key = params.cache_key()
        with self._lock:
            compiled = self._cache.get(key)
            if compiled is not None:
                self._cache.move_to_end(key)
                return compiled
        try:
            compiled = self._compile(params)
        except (RuntimeError, TypeError, ValueError, KeyError) as err:
            message = _NATIVE_PREFIX.sub("", str(err).strip()).strip()
            raise ValueError(f"Invalid {_WHAT[params.kind]} in structured_outputs.{params.kind}: {message}") from None
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, params: StructuredOutputsParams) -> Any:
        c, kind = self._compiler, params.kind
        if kind == "json":
            schema = params.json if isinstance(params.json, str) else json.dumps(params.json)
            return c.compile_json_schema(
                schema,
                any_whitespace=not params.disable_any_whitespace,
                strict_mode=True,
            )
        if kind == "json_object":  # any object (not any JSON value), any keys
            return c.compile_json_schema('{"type": "object"}', any_whitespace=not params.disable_any_whitespace,
                                         strict_mode=False)
        if kind == "regex":
            return c.compile_regex(params.regex)
        if kind == "choice":
            alternatives = " | ".join(json.dumps(choice, ensure_ascii=False) for choice in params.choice)
            return c.compile_grammar(f"root ::= {alternatives}")
        if kind == "grammar":
            return c.compile_grammar(params.grammar)
        tag = json.loads(params.structural_tag)
        if isinstance(tag, dict) and "structures" in tag:  # the older format, as vLLM's response_format sends it
            items = [self._xgr.StructuralTagItem(begin=s["begin"], schema=json.dumps(s["schema"]), end=s["end"])
                     for s in tag["structures"]]
            return c.compile_structural_tag(items, tag.get("triggers", []))
        return c.compile_structural_tag(params.structural_tag)
