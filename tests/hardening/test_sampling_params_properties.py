"""`SamplingParams` and `BeamSearchParams` with any combination of field values: each either builds (and
then verifies, clones and prints) or raises `ValueError`, never another exception.

The server relies on this: a `ValueError` is a 400 naming the field; anything else would be a 500.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxllm.sampling_params import (
    BeamSearchParams,
    GuidedDecodingParams,
    RequestOutputKind,
    SamplingParams,
    SamplingType,
    StructuredOutputsParams,
)
from tests.hardening.conftest import examples

VOCAB = 400

# Values of the wrong type, or of the right type and out of range.
garbage = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([10**400, -(10**400)]),  # too large for a float
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.binary(max_size=3),
    st.lists(st.one_of(st.integers(-5, 500), st.text(max_size=3), st.none(), st.floats()), max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=3), st.integers(-3, 500)),
                    st.one_of(st.floats(), st.integers(-300, 300), st.just(10**400), st.text(max_size=2), st.none()),
                    max_size=3),
    st.just(object()),
    st.just(RequestOutputKind.DELTA),
    st.sampled_from(["delta", "FINAL_ONLY", "nope"]),
)

small_float = st.floats(-3, 3, allow_nan=False)
token_ids = st.lists(st.integers(-2, VOCAB + 2), max_size=4)

# Plausible values per field, so that most draws get past the type checks to the range checks.
plausible = {
    "n": st.integers(-1, 5),
    "best_of": st.one_of(st.none(), st.integers(-1, 6)),
    "presence_penalty": small_float,
    "frequency_penalty": small_float,
    "repetition_penalty": st.floats(-0.5, 3),
    "temperature": st.one_of(st.floats(-0.5, 2.5), st.sampled_from([0.0, 1e-6, 1e-3])),
    "top_p": st.floats(-0.1, 1.1),
    "top_k": st.integers(-3, 50),
    "min_p": st.floats(-0.1, 1.1),
    "seed": st.one_of(st.none(), st.integers(-2, 2**64)),
    "stop": st.one_of(st.none(), st.text(max_size=3), st.lists(st.text(max_size=3), max_size=3)),
    "stop_token_ids": st.one_of(st.none(), token_ids),
    "ignore_eos": st.booleans(),
    "max_tokens": st.one_of(st.none(), st.integers(-1, 40)),
    "min_tokens": st.integers(-1, 40),
    "logprobs": st.one_of(st.none(), st.booleans(), st.integers(-2, 30)),
    "prompt_logprobs": st.one_of(st.none(), st.integers(-2, 30)),
    "detokenize": st.booleans(),
    "skip_special_tokens": st.booleans(),
    "spaces_between_special_tokens": st.booleans(),
    "include_stop_str_in_output": st.booleans(),
    "truncate_prompt_tokens": st.one_of(st.none(), st.integers(-2, 10)),
    "output_kind": st.sampled_from(list(RequestOutputKind) + [0, 1, 2, "delta"]),
    "logit_bias": st.one_of(st.none(), st.dictionaries(st.one_of(st.integers(-2, VOCAB + 2), st.text(max_size=3)),
                                                       st.floats(-200, 200), max_size=3)),
    "allowed_token_ids": st.one_of(st.none(), token_ids),
    "extra_args": st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
    "bad_words": st.one_of(st.none(), st.lists(st.text(max_size=3), max_size=3)),
    "use_beam_search": st.booleans(),
    "length_penalty": st.one_of(st.just(1.0), st.floats(allow_nan=True, allow_infinity=True)),
    "structured_outputs": st.one_of(st.none(), st.builds(StructuredOutputsParams, regex=st.text(max_size=4)),
                                    st.fixed_dictionaries({"choice": st.lists(st.text(max_size=3), max_size=2)})),
    "guided_decoding": st.one_of(st.none(), st.builds(GuidedDecodingParams, json_object=st.just(True))),
}
FIELDS = [f.name for f in fields(SamplingParams)]
assert set(plausible) == set(FIELDS), set(FIELDS) ^ set(plausible)


@st.composite
def sampling_kwargs(draw):
    """A subset of the fields, each plausible (mostly) or garbage."""
    names = draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=len(FIELDS)))
    return {name: draw(st.one_of(plausible[name], plausible[name], plausible[name], garbage)) for name in names}


def _build(cls, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # temperatures below 1e-2 warn, as in vLLM
        try:
            return cls(**kwargs)
        except ValueError:
            return None


@settings(max_examples=examples(600))
@given(kwargs=sampling_kwargs(), max_logprobs=st.sampled_from([-1, 0, 5, 20]))
def test_sampling_params_validate_or_raise_value_error(kwargs, max_logprobs):
    params = _build(SamplingParams, kwargs)
    if params is None:
        return
    try:
        params.verify(max_logprobs=max_logprobs, vocab_size=VOCAB)
    except ValueError:
        return
    # A valid object is normalised: the types the engine relies on, and usable everywhere.
    assert isinstance(params.n, int) and params.n >= 1
    assert params.best_of is None or params.best_of >= params.n
    assert all(math.isfinite(v) for v in (params.temperature, params.top_p, params.min_p,
                                          params.repetition_penalty, params.length_penalty))
    assert 0 <= params.temperature <= 2 and 0 < params.top_p <= 1 and params.top_k >= 0
    assert params.max_tokens is None or (isinstance(params.max_tokens, int) and params.max_tokens >= 1)
    assert isinstance(params.stop, list) and all(isinstance(s, str) and s for s in params.stop)
    assert all(isinstance(t, int) and 0 <= t < VOCAB for t in params.stop_token_ids)
    assert params.logit_bias is None or all(isinstance(t, int) and -100 <= b <= 100
                                            for t, b in params.logit_bias.items())
    assert isinstance(params.output_kind, RequestOutputKind)
    assert isinstance(params.sampling_type, SamplingType)
    assert params.output_text_buffer_length >= 0
    assert params.clone() == params
    assert repr(params).startswith("SamplingParams(")
    params.update_from_generation_config({"eos_token_id": [2, 3]}, 2)


beam_plausible = {
    "beam_width": st.integers(-1, 12),
    "max_tokens": st.integers(-1, 40),
    "ignore_eos": st.booleans(),
    "temperature": st.floats(allow_nan=True, allow_infinity=True),
    "length_penalty": st.floats(allow_nan=True, allow_infinity=True),
    "include_stop_str_in_output": st.booleans(),
}


@settings(max_examples=examples(200))
@given(data=st.data())
def test_beam_search_params_validate_or_raise_value_error(data):
    names = data.draw(st.lists(st.sampled_from(list(beam_plausible)), unique=True))
    kwargs = {n: data.draw(st.one_of(beam_plausible[n], beam_plausible[n], garbage)) for n in names}
    kwargs.setdefault("beam_width", 2)
    kwargs.setdefault("max_tokens", 8)
    params = _build(BeamSearchParams, kwargs)
    if params is not None:
        assert params.beam_width >= 1 and params.max_tokens >= 1
        assert math.isfinite(params.temperature) and math.isfinite(params.length_penalty)


# An integer too large for a float (10**400) in a float field or a logit_bias value is a ValueError
# (float() used to raise OverflowError there).


@pytest.mark.parametrize("kwargs", [
    {"presence_penalty": 10**400},
    {"temperature": -(10**400)},
    {"logit_bias": {5: 10**400}},
], ids=["presence_penalty", "temperature", "logit_bias"])
def test_huge_integers_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_huge_integer_beam_temperature_raises_value_error():
    with pytest.raises(ValueError):
        BeamSearchParams(beam_width=2, max_tokens=4, temperature=10**400)
