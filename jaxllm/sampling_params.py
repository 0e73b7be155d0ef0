"""Sampling parameters for text generation, with vLLM's fields, defaults and validation rules.

`SamplingParams` is a plain dataclass, so `SamplingParams.__annotations__` lists its fields (LangChain
filters its keyword arguments by them). `__post_init__` normalises the values the way vLLM does
(`stop="x"` -> `["x"]`, `seed=-1` -> None, `top_k=-1` -> 0, `logprobs=True` -> 1, ...) and raises a
`ValueError` whose message names the offending field for every invalid value, including values of the
wrong type.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, fields
from enum import Enum, IntEnum
from typing import Any

from jaxllm.beam_search_params import BeamSearchParams  # noqa: F401  (re-exported: vLLM's import path)
from jaxllm.params_validation import (
    _bool_field,
    _check_logprobs_limit,
    _float_field,
    _int_field,
    _int_list_field,
    _is_int,
    _logit_bias_field,
    _logprobs_field,
    _str_list_field,
    _verify_num_sequences,
)
from jaxllm.structured_output.params import GuidedDecodingParams, StructuredOutputsParams

_SAMPLING_EPS = 1e-5  # temperatures below this mean greedy sampling
_MIN_TEMP = 1e-2  # smaller positive temperatures are raised to this (numerical safety)
MAX_LOGPROBS = 20  # vLLM's default --max-logprobs

# Limit applied by `SamplingParams.__post_init__`; an engine configured with a larger `max_logprobs`
# raises it through `set_max_logprobs_limit`, and checks its own limit with `SamplingParams.verify`.
_max_logprobs_limit = MAX_LOGPROBS


def set_max_logprobs_limit(limit: int) -> None:
    """Set the largest `logprobs` / `prompt_logprobs` accepted at construction (-1: no limit)."""
    global _max_logprobs_limit
    _max_logprobs_limit = limit


class SamplingType(IntEnum):
    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2


class RequestOutputKind(Enum):
    CUMULATIVE = 0  # every RequestOutput carries the whole output so far
    DELTA = 1  # every RequestOutput carries only what is new
    FINAL_ONLY = 2  # only the finished RequestOutput is returned


def _output_kind_field(value: Any) -> RequestOutputKind:
    if isinstance(value, RequestOutputKind):
        return value
    try:
        if isinstance(value, str):
            return RequestOutputKind[value.upper()]
        return RequestOutputKind(value)
    except (KeyError, ValueError):
        raise ValueError(f"output_kind must be a RequestOutputKind, got {value!r}.") from None


# The fields vLLM's `SamplingParams.__repr__` shows, in its order.
_REPR_FIELDS = (
    "n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p", "top_k",
    "min_p", "seed", "stop", "stop_token_ids", "bad_words", "include_stop_str_in_output", "ignore_eos",
    "max_tokens", "min_tokens", "logprobs", "prompt_logprobs", "skip_special_tokens",
    "spaces_between_special_tokens", "truncate_prompt_tokens", "structured_outputs", "extra_args",
)


@dataclass(eq=True)
class SamplingParams:
    """Sampling parameters for text generation (vLLM's `SamplingParams`).

    Temperature 0 means greedy decoding. `top_k` 0 (or -1) and `top_p` 1 disable those filters.
    `max_tokens=None` generates until EOS or the model's context limit. `stop` strings are not part of the
    output unless `include_stop_str_in_output`; `stop_token_ids` are kept unless they are special tokens.
    `logprobs=N` returns the N most likely tokens per step plus the sampled one; -1 the whole vocabulary.
    `use_beam_search` / `length_penalty` are accepted for callers of older vLLM versions.
    """

    n: int = 1
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    truncate_prompt_tokens: int | None = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    extra_args: dict[str, Any] | None = None
    bad_words: list[str] | None = None
    use_beam_search: bool = False
    length_penalty: float = 1.0
    structured_outputs: StructuredOutputsParams | None = None
    guided_decoding: GuidedDecodingParams | None = None  # the older name of `structured_outputs`

    def __post_init__(self) -> None:
        self._coerce_types()
        if 0 < self.temperature < _MIN_TEMP:
            warnings.warn(
                f"temperature {self.temperature} is less than {_MIN_TEMP}, which may cause numerical "
                f"errors nan or inf in tensors. We have maxed it out to {_MIN_TEMP}.",
                stacklevel=3,
            )
            self.temperature = _MIN_TEMP
        if self.seed == -1:
            self.seed = None
        self.stop = [] if self.stop is None else _str_list_field("stop", self.stop)
        ids = [] if self.stop_token_ids is None else _int_list_field("stop_token_ids", self.stop_token_ids)
        self.stop_token_ids = list(dict.fromkeys(ids))
        words = [] if self.bad_words is None else _str_list_field("bad_words", self.bad_words)
        self.bad_words = list(dict.fromkeys(words))
        self.logit_bias = _logit_bias_field(self.logit_bias)
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = _int_list_field("allowed_token_ids", self.allowed_token_ids)
        self._verify_args()
        if self.top_k == -1:
            self.top_k = 0
        if self.temperature < _SAMPLING_EPS:
            self.top_p = 1.0
            self.top_k = 0
            self.min_p = 0.0
            if not self.use_beam_search:
                self._verify_greedy_sampling()
        self._eos_token_id: int | None = None
        self._all_stop_token_ids: set[int] = set(self.stop_token_ids)

    def _coerce_types(self) -> None:
        for name in ("presence_penalty", "frequency_penalty", "repetition_penalty", "temperature",
                     "top_p", "min_p", "length_penalty"):
            setattr(self, name, _float_field(name, getattr(self, name)))
        self.n = _verify_num_sequences(self.n, "n")
        if self.best_of is not None:
            self.best_of = _verify_num_sequences(self.best_of, "best_of")
        if not _is_int(self.top_k):
            raise ValueError(f"top_k must be an integer, got {type(self.top_k).__name__}")
        self.top_k = int(self.top_k)
        for name in ("seed", "max_tokens", "truncate_prompt_tokens"):
            setattr(self, name, _int_field(name, getattr(self, name), optional=True))
        self.min_tokens = _int_field("min_tokens", self.min_tokens)
        self.logprobs = _logprobs_field("logprobs", self.logprobs)
        self.prompt_logprobs = _logprobs_field("prompt_logprobs", self.prompt_logprobs)
        for name in ("ignore_eos", "detokenize", "skip_special_tokens", "spaces_between_special_tokens",
                     "include_stop_str_in_output", "use_beam_search"):
            setattr(self, name, _bool_field(name, getattr(self, name)))
        self.output_kind = _output_kind_field(self.output_kind)
        self._structured_outputs_field()
        if self.extra_args is not None and not isinstance(self.extra_args, dict):
            raise ValueError(f"extra_args must be a dict, got {type(self.extra_args).__name__}.")

    def _structured_outputs_field(self) -> None:
        for name in ("structured_outputs", "guided_decoding"):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, StructuredOutputsParams.from_dict(value))
            elif value is not None and not isinstance(value, StructuredOutputsParams):
                raise ValueError(f"{name} must be StructuredOutputsParams, got {type(value).__name__}.")
        if self.structured_outputs is None:
            self.structured_outputs = self.guided_decoding
        elif self.guided_decoding is not None and self.guided_decoding != self.structured_outputs:
            raise ValueError("Set structured_outputs or guided_decoding, not both.")

    def _verify_args(self) -> None:
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(
                f"best_of must be greater than or equal to n, got n={self.n} and best_of={self.best_of}."
            )
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise ValueError(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}.")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise ValueError(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}.")
        if not math.isfinite(self.repetition_penalty):
            raise ValueError(f"repetition_penalty must be a finite number, got {self.repetition_penalty}.")
        if self.repetition_penalty <= 0.0:
            raise ValueError(f"repetition_penalty must be greater than zero, got {self.repetition_penalty}.")
        if not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be a finite number, got {self.temperature}.")
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
        if self.temperature > 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < -1:
            raise ValueError(f"top_k must be 0 (disable), or at least 1, got {self.top_k}.")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be greater than or equal to 0, got {self.min_tokens}.")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, "
                f"got {self.min_tokens}."
            )
        _check_logprobs_limit("logprobs", self.logprobs, _max_logprobs_limit, None)
        _check_logprobs_limit("prompt_logprobs", self.prompt_logprobs, _max_logprobs_limit, None)
        tpt = self.truncate_prompt_tokens
        if tpt is not None and tpt != -1 and tpt < 1:
            raise ValueError(f"truncate_prompt_tokens must be >= 1 or -1, got {tpt}.")
        if any(not s for s in self.stop):
            raise ValueError("stop cannot contain an empty string.")
        if self.stop and not self.detokenize:
            raise ValueError(
                "stop strings are only supported when detokenize is True. Set detokenize=True to use stop."
            )
        if any(not w for w in self.bad_words):
            raise ValueError(f"bad_words cannot contain an empty string. Got bad_words={self.bad_words}")
        if self.allowed_token_ids is not None:
            if not self.allowed_token_ids:
                raise ValueError("allowed_token_ids is not None and empty!")
            if any(t < 0 for t in self.allowed_token_ids):
                raise ValueError("allowed_token_ids contains out-of-vocab token id!")
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty}.")
        if not self.use_beam_search and abs(self.length_penalty - 1.0) > _SAMPLING_EPS:
            raise ValueError("length_penalty is only allowed when using beam search.")

    def _verify_greedy_sampling(self) -> None:
        if self.n > 1:
            raise ValueError(f"n must be 1 when using greedy sampling, got {self.n}.")
        if self.best_of is not None and self.best_of > 1:
            raise ValueError(f"best_of must be 1 when using greedy sampling, got {self.best_of}.")

    @classmethod
    def from_optional(cls, **kwargs: Any) -> SamplingParams:
        """Build from keyword arguments where None means "use the default" (as the server does)."""
        defaults = {f.name: f.default for f in fields(cls)}
        unknown = set(kwargs) - set(defaults)
        if unknown:
            raise TypeError(f"from_optional() got unexpected keyword arguments: {sorted(unknown)}")
        return cls(**{k: defaults[k] if v is None else v for k, v in kwargs.items()})

    def verify(self, *, max_logprobs: int = MAX_LOGPROBS, vocab_size: int | None = None) -> None:
        """Checks that need the engine's configuration: the logprobs limit and the vocabulary size."""
        _check_logprobs_limit("logprobs", self.logprobs, max_logprobs, vocab_size)
        _check_logprobs_limit("prompt_logprobs", self.prompt_logprobs, max_logprobs, vocab_size)
        if vocab_size is None:
            return
        for name in ("stop_token_ids", "logit_bias"):
            bad = [t for t in (getattr(self, name) or ()) if not 0 <= t < vocab_size]
            if bad:
                raise ValueError(
                    f"token_id(s) {bad} in {name} contain out-of-vocab token ids. "
                    f"Vocabulary size: {vocab_size}"
                )
        if self.allowed_token_ids and any(not 0 <= t < vocab_size for t in self.allowed_token_ids):
            raise ValueError("allowed_token_ids contains out-of-vocab token id!")

    def update_from_generation_config(
        self, generation_config: dict[str, Any], model_eos_token_id: int | None = None
    ) -> None:
        """Take the model's extra EOS ids (generation_config.json) as stop tokens unless `ignore_eos`."""
        if not self.ignore_eos:
            self._eos_token_id = model_eos_token_id
        if model_eos_token_id is not None:
            self._all_stop_token_ids.add(model_eos_token_id)  # so min_tokens also holds it back
        eos_ids = generation_config.get("eos_token_id")
        if eos_ids is None:
            return
        eos_ids = {eos_ids} if isinstance(eos_ids, int) else set(eos_ids)
        eos_ids.discard(model_eos_token_id)  # the primary EOS is handled on its own
        if eos_ids:
            self._all_stop_token_ids.update(eos_ids)
            if not self.ignore_eos:
                self.stop_token_ids = self.stop_token_ids + sorted(eos_ids - set(self.stop_token_ids))

    @property
    def sampling_type(self) -> SamplingType:
        if self.temperature < _SAMPLING_EPS:
            return SamplingType.GREEDY
        if self.seed is not None:
            return SamplingType.RANDOM_SEED
        return SamplingType.RANDOM

    @property
    def eos_token_id(self) -> int | None:
        return self._eos_token_id

    @property
    def all_stop_token_ids(self) -> set[int]:
        return self._all_stop_token_ids

    @property
    def output_text_buffer_length(self) -> int:
        """Characters held back from streamed text, since they may be the start of a stop string."""
        if self.stop and not self.include_stop_str_in_output:
            return max(len(s) for s in self.stop) - 1
        return 0

    def clone(self) -> SamplingParams:
        """An independent copy: scalar fields are shared, containers and nested objects copied deeply.
        (Every request is given its own copy, so this is on the path of each `add_request`.)"""
        out = copy.copy(self)
        for name, value in self.__dict__.items():
            kind = type(value)
            if value is not None and kind not in _IMMUTABLE:
                setattr(out, name, kind() if kind in _CONTAINERS and not value else copy.deepcopy(value))
        return out

    def __repr__(self) -> str:
        return f"SamplingParams({', '.join(f'{k}={getattr(self, k)}' for k in _REPR_FIELDS)})"


_IMMUTABLE = frozenset({int, float, bool, str, bytes, RequestOutputKind})
_CONTAINERS = frozenset({list, dict, set})


def final_only(params: list[SamplingParams]) -> list[SamplingParams]:
    """`generate` returns each request's final output only (as vLLM's offline API does), so the engine
    builds no intermediate outputs; each distinct params object is copied once, never changed."""
    copies: dict[int, SamplingParams] = {}
    out = []
    for p in params:
        if id(p) not in copies:
            copies[id(p)] = p.clone()
            copies[id(p)].output_kind = RequestOutputKind.FINAL_ONLY
        out.append(copies[id(p)])
    return out
