import math
import warnings

import pytest

from jaxllm import sampling_params as sp_module
from jaxllm.sampling_params import (
    BeamSearchParams,
    RequestOutputKind,
    SamplingParams,
    SamplingType,
    set_max_logprobs_limit,
)
from jaxllm.structured_output.params import StructuredOutputsParams

VLLM_DEFAULTS = {
    "n": 1, "best_of": None, "presence_penalty": 0.0, "frequency_penalty": 0.0,
    "repetition_penalty": 1.0, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "seed": None,
    "stop": [], "stop_token_ids": [], "bad_words": [], "ignore_eos": False, "max_tokens": 16,
    "min_tokens": 0, "logprobs": None, "prompt_logprobs": None, "detokenize": True,
    "skip_special_tokens": True, "spaces_between_special_tokens": True, "include_stop_str_in_output": False,
    "output_kind": RequestOutputKind.CUMULATIVE, "logit_bias": None, "allowed_token_ids": None,
    "truncate_prompt_tokens": None, "use_beam_search": False, "length_penalty": 1.0,
}


def test_defaults_match_vllm():
    sp = SamplingParams()
    for name, value in VLLM_DEFAULTS.items():
        assert getattr(sp, name) == value, name
    assert sp.sampling_type is SamplingType.RANDOM
    assert sp.output_text_buffer_length == 0
    assert sp.all_stop_token_ids == set()


def test_annotations_list_fields_for_langchain():
    keys = set(SamplingParams.__annotations__)
    assert set(VLLM_DEFAULTS) <= keys
    # What langchain_community.llms.VLLM passes, filtered by __annotations__ like it does.
    langchain_params = {
        "n": 1, "best_of": None, "max_tokens": 512, "top_k": -1, "top_p": 1.0, "temperature": 1.0,
        "presence_penalty": 0.0, "frequency_penalty": 0.0, "stop": None, "ignore_eos": False,
        "use_beam_search": False, "logprobs": None, "max_new_tokens": 512,
    }
    sp = SamplingParams(**{k: v for k, v in langchain_params.items() if k in keys})
    assert sp.top_k == 0 and sp.max_tokens == 512 and sp.stop == []


def test_normalisation():
    sp = SamplingParams(stop="###", stop_token_ids=[7, 3, 7, 5, 3], seed=-1, top_k=-1, logprobs=True,
                        prompt_logprobs=True, bad_words=["x", "y", "x"])
    assert sp.stop == ["###"]
    assert sp.stop_token_ids == [7, 3, 5]
    assert sp.all_stop_token_ids == {3, 5, 7}
    assert sp.seed is None and sp.top_k == 0
    assert sp.logprobs == 1 and sp.prompt_logprobs == 1
    assert sp.bad_words == ["x", "y"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]
    assert SamplingParams(logprobs=False).logprobs == 0
    assert SamplingParams(logprobs=-1).logprobs == -1
    assert SamplingParams(max_tokens=None).max_tokens is None
    assert SamplingParams(truncate_prompt_tokens=-1).truncate_prompt_tokens == -1
    assert SamplingParams(output_kind="delta").output_kind is RequestOutputKind.DELTA
    assert SamplingParams(output_kind=2).output_kind is RequestOutputKind.FINAL_ONLY
    assert SamplingParams(temperature=1).temperature == 1.0 and isinstance(SamplingParams().top_p, float)


def test_logit_bias_keys_converted_and_values_clamped():
    sp = SamplingParams(logit_bias={"5": 3.5, 7: -250, "9": 1e9})
    assert sp.logit_bias == {5: 3.5, 7: -100.0, 9: 100.0}


def test_small_temperature_raised_with_warning():
    with pytest.warns(UserWarning, match="temperature"):
        sp = SamplingParams(temperature=0.001)
    assert sp.temperature == 0.01
    assert sp.sampling_type is SamplingType.RANDOM


def test_greedy_resets_filters():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sp = SamplingParams(temperature=0.0, top_p=0.5, top_k=40, min_p=0.2, seed=3)
    assert (sp.top_p, sp.top_k, sp.min_p) == (1.0, 0, 0.0)
    assert sp.sampling_type is SamplingType.GREEDY
    assert SamplingParams(temperature=0.5, seed=3).sampling_type is SamplingType.RANDOM_SEED
    # beam search widths above 1 are allowed at temperature 0
    sp = SamplingParams(temperature=0.0, n=3, use_beam_search=True, length_penalty=0.8)
    assert sp.n == 3 and sp.length_penalty == 0.8


INVALID = [
    # (kwargs, field the message names, part of the message)
    ({"n": 0}, "n", "n must be at least 1, got 0."),
    ({"n": 20000}, "n", "n must be at most 16384"),
    ({"n": "3"}, "n", "n must be an int"),
    ({"n": 2.0}, "n", "n must be an int"),
    ({"n": None}, "n", "n must be an int"),
    ({"best_of": 0}, "best_of", "best_of must be at least 1"),
    ({"n": 3, "best_of": 2}, "best_of", "best_of must be greater than or equal to n, got n=3 and best_of=2."),
    ({"best_of": "2"}, "best_of", "best_of must be an int"),
    ({"presence_penalty": 2.5}, "presence_penalty", "presence_penalty must be in [-2, 2], got 2.5."),
    ({"presence_penalty": -3}, "presence_penalty", "presence_penalty must be in [-2, 2]"),
    ({"presence_penalty": math.nan}, "presence_penalty", "presence_penalty must be in [-2, 2]"),
    ({"frequency_penalty": -2.1}, "frequency_penalty", "frequency_penalty must be in [-2, 2]"),
    ({"frequency_penalty": "x"}, "frequency_penalty", "frequency_penalty must be a number"),
    ({"repetition_penalty": 0.0}, "repetition_penalty", "repetition_penalty must be greater than zero"),
    ({"repetition_penalty": math.inf}, "repetition_penalty", "repetition_penalty must be a finite number"),
    ({"temperature": -0.5}, "temperature", "temperature must be non-negative, got -0.5."),
    ({"temperature": 2.5}, "temperature", "temperature must be in [0, 2], got 2.5."),
    ({"temperature": math.inf}, "temperature", "temperature must be a finite number"),
    ({"temperature": math.nan}, "temperature", "temperature must be a finite number"),
    ({"temperature": "hot"}, "temperature", "temperature must be a number, got str."),
    ({"temperature": None}, "temperature", "temperature must be a number"),
    ({"temperature": [1.0]}, "temperature", "temperature must be a number"),
    ({"top_p": 0.0}, "top_p", "top_p must be in (0, 1], got 0.0."),
    ({"top_p": 1.5}, "top_p", "top_p must be in (0, 1]"),
    ({"top_p": "1"}, "top_p", "top_p must be a number"),
    ({"top_k": -2}, "top_k", "top_k must be 0 (disable), or at least 1, got -2."),
    ({"top_k": 1.5}, "top_k", "top_k must be an integer, got float"),
    ({"top_k": "5"}, "top_k", "top_k must be an integer"),
    ({"min_p": 1.5}, "min_p", "min_p must be in [0, 1], got 1.5."),
    ({"min_p": -0.1}, "min_p", "min_p must be in [0, 1]"),
    ({"seed": "42"}, "seed", "seed must be an integer"),
    ({"seed": 1.5}, "seed", "seed must be an integer"),
    ({"stop": [""]}, "stop", "stop cannot contain an empty string."),
    ({"stop": ["ok", ""]}, "stop", "stop cannot contain an empty string."),
    ({"stop": ""}, "stop", "stop cannot contain an empty string."),
    ({"stop": [1, 2]}, "stop", "stop must be a string or a list of strings"),
    ({"stop": 5}, "stop", "stop must be a string or a list of strings"),
    ({"stop": ["x"], "detokenize": False}, "stop", "stop strings are only supported when detokenize is True"),
    ({"stop_token_ids": [1, "2"]}, "stop_token_ids", "stop_token_ids must contain only integers"),
    ({"stop_token_ids": 5}, "stop_token_ids", "stop_token_ids must be a list of integers"),
    ({"bad_words": [""]}, "bad_words", "bad_words cannot contain an empty string"),
    ({"max_tokens": 0}, "max_tokens", "max_tokens must be at least 1, got 0."),
    ({"max_tokens": -5}, "max_tokens", "max_tokens must be at least 1, got -5."),
    ({"max_tokens": "16"}, "max_tokens", "max_tokens must be an integer"),
    ({"max_tokens": 16.5}, "max_tokens", "max_tokens must be an integer"),
    ({"min_tokens": -1}, "min_tokens", "min_tokens must be greater than or equal to 0, got -1."),
    ({"min_tokens": 10, "max_tokens": 5}, "min_tokens",
     "min_tokens must be less than or equal to max_tokens=5"),
    ({"min_tokens": "1"}, "min_tokens", "min_tokens must be an integer"),
    ({"logprobs": 21}, "logprobs", "Requested sample logprobs of 21, which is greater than max allowed: 20"),
    ({"logprobs": -2}, "logprobs", "logprobs must be non-negative or -1, got -2."),
    ({"logprobs": "5"}, "logprobs", "logprobs must be an integer"),
    ({"logprobs": 2.5}, "logprobs", "logprobs must be an integer"),
    ({"prompt_logprobs": 50}, "prompt_logprobs", "Requested prompt logprobs of 50"),
    ({"prompt_logprobs": -3}, "prompt_logprobs", "prompt_logprobs must be non-negative or -1"),
    ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens", "truncate_prompt_tokens must be >= 1 or -1"),
    ({"truncate_prompt_tokens": -2}, "truncate_prompt_tokens", "truncate_prompt_tokens must be >= 1 or -1"),
    ({"logit_bias": {"abc": 1.0}}, "logit_bias", "logit_bias contains key(s) that cannot be converted"),
    ({"logit_bias": {1: "high"}}, "logit_bias", "logit_bias values must be numbers"),
    ({"logit_bias": [1, 2]}, "logit_bias", "logit_bias must be a dict"),
    ({"allowed_token_ids": []}, "allowed_token_ids", "allowed_token_ids is not None and empty!"),
    ({"allowed_token_ids": [1, "a"]}, "allowed_token_ids", "allowed_token_ids must contain only integers"),
    ({"allowed_token_ids": [-1]}, "allowed_token_ids", "allowed_token_ids contains out-of-vocab token id!"),
    ({"temperature": 0.0, "n": 2}, "n", "n must be 1 when using greedy sampling, got 2."),
    ({"temperature": 0.0, "best_of": 2}, "best_of", "best_of must be 1 when using greedy sampling"),
    ({"length_penalty": 0.5}, "length_penalty", "length_penalty is only allowed when using beam search."),
    ({"length_penalty": "1"}, "length_penalty", "length_penalty must be a number"),
    ({"ignore_eos": "yes"}, "ignore_eos", "ignore_eos must be a boolean"),
    ({"detokenize": None}, "detokenize", "detokenize must be a boolean"),
    ({"skip_special_tokens": "false"}, "skip_special_tokens", "skip_special_tokens must be a boolean"),
    ({"include_stop_str_in_output": 2}, "include_stop_str_in_output", "must be a boolean"),
    ({"use_beam_search": "no"}, "use_beam_search", "use_beam_search must be a boolean"),
    ({"output_kind": "streaming"}, "output_kind", "output_kind must be a RequestOutputKind"),
    ({"extra_args": [1]}, "extra_args", "extra_args must be a dict"),
]


@pytest.mark.parametrize("kwargs,field,message", INVALID, ids=[str(k) for k, _, _ in INVALID])
def test_invalid_values_raise_value_error_naming_the_field(kwargs, field, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError) as info:
            SamplingParams(**kwargs)
    text = str(info.value)
    assert message in text
    assert field in text or field.replace("_", " ") in text


@pytest.mark.parametrize("kwargs", [
    {"temperature": 2.0}, {"temperature": 0}, {"top_p": 1e-9}, {"top_k": 1}, {"min_p": 1.0},
    {"presence_penalty": -2.0, "frequency_penalty": 2.0}, {"repetition_penalty": 1e-3},
    {"max_tokens": 1, "min_tokens": 1}, {"logprobs": 20, "prompt_logprobs": 0}, {"logprobs": 0},
    {"n": 4, "best_of": 4}, {"n": 16384}, {"seed": -(2**40)}, {"stop_token_ids": []},
    {"allowed_token_ids": [0]}, {"logit_bias": {}}, {"max_tokens": None, "min_tokens": 10**6},
    {"truncate_prompt_tokens": 1},
])
def test_valid_edges_accepted(kwargs):
    SamplingParams(**kwargs)


def test_numpy_scalars_accepted():
    np = pytest.importorskip("numpy")
    sp = SamplingParams(n=np.int64(2), temperature=np.float32(0.5), top_k=np.int32(3), max_tokens=np.int64(8),
                        ignore_eos=np.bool_(True), stop_token_ids=np.array([4, 4, 5]))
    assert (sp.n, sp.top_k, sp.max_tokens, sp.stop_token_ids) == (2, 3, 8, [4, 5])
    assert type(sp.n) is int and type(sp.temperature) is float and sp.ignore_eos is True


def test_logprobs_limit_can_be_raised_by_the_engine():
    set_max_logprobs_limit(100)
    try:
        sp = SamplingParams(logprobs=50)
    finally:
        set_max_logprobs_limit(sp_module.MAX_LOGPROBS)
    sp.verify(max_logprobs=100, vocab_size=1000)
    with pytest.raises(ValueError, match="Requested sample logprobs of 50, which is greater than max"):
        sp.verify()
    with pytest.raises(ValueError, match="Requested sample logprobs of 1000"):
        SamplingParams(logprobs=-1).verify(vocab_size=1000)
    SamplingParams(logprobs=-1).verify(max_logprobs=-1, vocab_size=1000)


def test_verify_out_of_vocab_ids():
    SamplingParams(stop_token_ids=[0, 9], logit_bias={9: 1}, allowed_token_ids=[9]).verify(vocab_size=10)
    with pytest.raises(ValueError, match=r"token_id\(s\) \[10\] in stop_token_ids contain out-of-vocab"):
        SamplingParams(stop_token_ids=[1, 10]).verify(vocab_size=10)
    with pytest.raises(ValueError, match="in logit_bias contain out-of-vocab token ids. Vocabulary size: 10"):
        SamplingParams(logit_bias={"12": 1.0}).verify(vocab_size=10)
    with pytest.raises(ValueError, match="allowed_token_ids contains out-of-vocab token id!"):
        SamplingParams(allowed_token_ids=[10]).verify(vocab_size=10)


def test_output_text_buffer_length():
    assert SamplingParams(stop=["a", "abcd", "xy"]).output_text_buffer_length == 3
    assert SamplingParams(stop=["abcd"], include_stop_str_in_output=True).output_text_buffer_length == 0
    assert SamplingParams(stop="z").output_text_buffer_length == 0


def test_clone_is_deep():
    sp = SamplingParams(stop=["x"], stop_token_ids=[3], logit_bias={1: 2.0})
    sp.update_from_generation_config({"eos_token_id": [5, 6]}, model_eos_token_id=5)
    c = sp.clone()
    assert c == sp and c is not sp
    c.stop.append("y")
    c.all_stop_token_ids.add(99)
    assert sp.stop == ["x"] and 99 not in sp.all_stop_token_ids
    assert c.eos_token_id == 5
    c.logit_bias[1] = -1.0
    c.stop_token_ids.append(7)
    assert sp.logit_bias == {1: 2.0} and 7 not in sp.stop_token_ids


def test_clone_copies_nested_params():
    sp = SamplingParams(structured_outputs=StructuredOutputsParams(choice=["a", "b"]), extra_args={"k": [1]})
    c = sp.clone()
    assert c == sp
    c.structured_outputs.choice.append("c")
    c.extra_args["k"].append(2)
    assert sp.structured_outputs.choice == ["a", "b"] and sp.extra_args == {"k": [1]}


def test_from_optional_none_means_default():
    sp = SamplingParams.from_optional(n=None, temperature=None, top_p=None, top_k=None, max_tokens=None,
                                      stop=None, presence_penalty=None, min_p=None, min_tokens=None)
    assert (sp.n, sp.temperature, sp.top_p, sp.top_k, sp.max_tokens) == (1, 1.0, 1.0, 0, 16)
    assert sp.stop == [] and sp.min_tokens == 0
    assert SamplingParams.from_optional(temperature=0.3, seed=5).temperature == 0.3
    with pytest.raises(TypeError):
        SamplingParams.from_optional(nonsense=1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams.from_optional(top_p=0.0)


def test_update_from_generation_config():
    sp = SamplingParams(stop_token_ids=[3])
    sp.update_from_generation_config({"eos_token_id": [2, 7, 8]}, model_eos_token_id=2)
    assert sp.stop_token_ids == [3, 7, 8]  # the primary EOS stays out, it is handled on its own
    assert sp.all_stop_token_ids == {2, 3, 7, 8}
    assert sp.eos_token_id == 2

    sp = SamplingParams(ignore_eos=True)
    sp.update_from_generation_config({"eos_token_id": [2, 7]}, model_eos_token_id=2)
    assert sp.stop_token_ids == [] and sp.eos_token_id is None
    assert sp.all_stop_token_ids == {2, 7}  # still used for min_tokens

    sp = SamplingParams()
    sp.update_from_generation_config({"eos_token_id": 2}, model_eos_token_id=2)
    assert sp.stop_token_ids == [] and sp.all_stop_token_ids == {2}
    sp = SamplingParams()
    sp.update_from_generation_config({}, model_eos_token_id=None)
    assert sp.stop_token_ids == [] and sp.all_stop_token_ids == set()


def test_repr_like_vllm():
    r = repr(SamplingParams(temperature=0.8, top_p=0.95, stop="END", seed=1))
    assert r.startswith("SamplingParams(n=1, presence_penalty=0.0, frequency_penalty=0.0, "
                        "repetition_penalty=1.0, temperature=0.8, top_p=0.95, top_k=0, min_p=0.0, seed=1, "
                        "stop=['END'], stop_token_ids=[], bad_words=[], include_stop_str_in_output=False, "
                        "ignore_eos=False, max_tokens=16, min_tokens=0, logprobs=None, prompt_logprobs=None, "
                        "skip_special_tokens=True, spaces_between_special_tokens=True, ")
    assert r.endswith(")")


def test_equality_and_positional_order():
    assert SamplingParams(stop="x") == SamplingParams(stop=["x"])
    assert SamplingParams(2, 3) == SamplingParams(n=2, best_of=3)


def test_beam_search_params():
    bp = BeamSearchParams(beam_width=4, max_tokens=32)
    assert (bp.ignore_eos, bp.temperature, bp.length_penalty, bp.include_stop_str_in_output) == (
        False, 0.0, 1.0, False)
    for kwargs, field in [
        ({"beam_width": 0, "max_tokens": 8}, "beam_width"),
        ({"beam_width": "2", "max_tokens": 8}, "beam_width"),
        ({"beam_width": 2, "max_tokens": 0}, "max_tokens"),
        ({"beam_width": 2, "max_tokens": 1.5}, "max_tokens"),
        ({"beam_width": 2, "max_tokens": 8, "temperature": -1}, "temperature"),
        ({"beam_width": 2, "max_tokens": 8, "temperature": "x"}, "temperature"),
        ({"beam_width": 2, "max_tokens": 8, "length_penalty": math.nan}, "length_penalty"),
        ({"beam_width": 2, "max_tokens": 8, "ignore_eos": "y"}, "ignore_eos"),
    ]:
        with pytest.raises(ValueError, match=field):
            BeamSearchParams(**kwargs)
