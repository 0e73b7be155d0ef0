"""Field checks shared by `SamplingParams` and `BeamSearchParams`: each coerces one value or raises a
`ValueError` whose message names the field (vLLM reports every invalid parameter as ValueError).
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

_MAX_N_SEQUENCES_DEFAULT = 16384


# --- type checks: every wrong type becomes a ValueError naming the field -------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral)  # bool is an int, as in vLLM


def _int_field(name: str, value: Any, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not _is_int(value):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}.")
    return int(value)


def _float_field(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        # ValueError, not TypeError: vLLM and its servers report every invalid parameter as ValueError.
        raise ValueError(f"{name} must be a number, got {type(value).__name__}.")
    try:
        return float(value)
    except OverflowError:  # an int beyond float range, e.g. 10**400
        raise ValueError(f"{name} is out of range, got an integer of {len(str(abs(value)))} digits.") from None


def _bool_field(name: str, value: Any) -> bool:
    if hasattr(value, "item") and not isinstance(value, bool):  # numpy scalars
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{name} must be a boolean, got {type(value).__name__}.")


def _int_list_field(name: str, value: Any) -> list[int]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a list of integers, got {type(value).__name__}.")
    items = list(value)
    if not all(_is_int(v) for v in items):
        raise ValueError(f"{name} must contain only integers, got {items}.")
    return [int(v) for v in items]


def _str_list_field(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a string or a list of strings, got {type(value).__name__}.")
    items = list(value)
    if not all(isinstance(v, str) for v in items):
        raise ValueError(f"{name} must be a string or a list of strings, got {items!r}.")
    return items


def _verify_num_sequences(value: Any, name: str) -> int:
    if not _is_int(value):
        raise ValueError(f"{name} must be an int, but is of type {type(value)}")
    value = int(value)
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}.")
    max_n = int(os.environ.get("VLLM_MAX_N_SEQUENCES", _MAX_N_SEQUENCES_DEFAULT))
    if value > max_n:
        raise ValueError(
            f"{name} must be at most {max_n}, got {value}. "
            "To increase this limit, set the VLLM_MAX_N_SEQUENCES environment variable."
        )
    return value


def _logprobs_field(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if value is True:
        return 1
    value = _int_field(name, value)
    if value < 0 and value != -1:
        raise ValueError(f"{name} must be non-negative or -1, got {value}.")
    return value


def _check_logprobs_limit(name: str, value: int | None, limit: int, vocab_size: int | None) -> None:
    kind = "sample" if name == "logprobs" else "prompt"
    if not value or limit == -1:
        return
    if value == -1:
        if vocab_size is None:
            return  # "the whole vocabulary"; checked once the vocabulary size is known
        value = vocab_size
    if value > limit:
        raise ValueError(f"Requested {kind} logprobs of {value}, which is greater than max allowed: {limit}")


def _logit_bias_field(value: Any) -> dict[int, float] | None:
    if value is None:
        return None
    if not hasattr(value, "items"):
        raise ValueError(
            f"logit_bias must be a dict mapping token ids to biases, got {type(value).__name__}."
        )
    bias: dict[int, float] = {}
    bad_keys = []
    for token, b in value.items():
        try:
            token_id = int(token)
        except (TypeError, ValueError):
            bad_keys.append(token)
            continue
        if isinstance(b, bool) or not isinstance(b, numbers.Real):
            raise ValueError(f"logit_bias values must be numbers, got {b!r} for token {token!r}.")
        b = _float_field(f"logit_bias[{token!r}]", b)
        if math.isnan(b):
            raise ValueError(f"logit_bias values must be numbers, got {b!r} for token {token!r}.")
        bias[token_id] = min(100.0, max(-100.0, b))
    if bad_keys:
        raise ValueError(
            f"logit_bias contains key(s) that cannot be converted to integer token IDs: {bad_keys!r}"
        )
    return bias
