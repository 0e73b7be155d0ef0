"""`LLM.generate` end to end on a tiny random Llama: vLLM's objects, sampling options and errors."""

import math

import numpy as np
import pytest

from jaxllm import LLM, CompletionOutput, Logprob, RequestOutput, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(tiny_model_dir, max_model_len=128, max_num_seqs=8)


PROMPTS = ["hello world", "The quick brown fox", "def fibonacci(n):", "import os"]


def test_outputs_are_vllm_objects_in_input_order(llm):
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0), use_tqdm=False)
    assert [o.prompt for o in outs] == PROMPTS
    for o in outs:
        assert isinstance(o, RequestOutput) and o.finished
        c = o.outputs[0]
        assert isinstance(c, CompletionOutput) and c.index == 0
        assert len(c.token_ids) <= 16  # vLLM's default max_tokens
        assert c.finish_reason in ("stop", "length")
        assert c.cumulative_logprob is None and c.logprobs is None  # not asked for
    assert [o.request_id for o in outs] == sorted((o.request_id for o in outs), key=int)


def test_prompt_forms_and_per_prompt_params(llm):
    tok = llm.get_tokenizer()
    ids = tok("hello world").input_ids
    sp = [SamplingParams(temperature=0, max_tokens=4), SamplingParams(temperature=0, max_tokens=7)]
    a, b = llm.generate([{"prompt": "hello world"}, {"prompt_token_ids": ids}], sp, use_tqdm=False)
    assert a.prompt_token_ids == b.prompt_token_ids == ids
    assert len(a.outputs[0].token_ids) <= 4 and len(b.outputs[0].token_ids) <= 7
    assert b.outputs[0].token_ids[: len(a.outputs[0].token_ids)] == a.outputs[0].token_ids
    with pytest.raises(ValueError, match="same"):
        llm.generate(["a", "b"], sp[:1], use_tqdm=False)


def test_seeded_sampling_is_reproducible_and_batch_independent(llm):
    sp = SamplingParams(temperature=1.0, seed=1234, max_tokens=12, ignore_eos=True)
    alone = llm.generate("hello world", sp, use_tqdm=False)[0].outputs[0].token_ids
    noisy = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)
    mixed = llm.generate(["import os", "hello world", "def f"], [noisy, sp, noisy], use_tqdm=False)
    assert mixed[1].outputs[0].token_ids == alone
    other = llm.generate("hello world", SamplingParams(temperature=1.0, seed=99, max_tokens=12, ignore_eos=True),
                         use_tqdm=False)[0].outputs[0].token_ids
    assert other != alone


def test_n_completions_differ_when_sampling(llm):
    out = llm.generate("hello", SamplingParams(n=4, temperature=1.0, max_tokens=10, ignore_eos=True, seed=3),
                       use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1


def test_stop_strings_cut_text_and_set_reasons(llm):
    base = llm.generate("hello world", SamplingParams(temperature=0, max_tokens=24, ignore_eos=True),
                        use_tqdm=False)[0].outputs[0]
    text = base.text
    assert len(text) > 6
    stop = text[3:5]  # a string that greedy decoding is known to produce
    cut = llm.generate("hello world", SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop]),
                       use_tqdm=False)[0].outputs[0]
    assert cut.text == text[: text.index(stop)]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    kept = llm.generate("hello world", SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop],
                                                      include_stop_str_in_output=True), use_tqdm=False)[0].outputs[0]
    assert kept.text == text[: text.index(stop) + len(stop)]


def test_stop_token_ids_and_min_tokens(llm):
    base = llm.generate("hello world", SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
                        use_tqdm=False)[0].outputs[0].token_ids
    target = base[5]
    first = base.index(target)
    out = llm.generate("hello world", SamplingParams(temperature=0, max_tokens=20, ignore_eos=True,
                                                     stop_token_ids=[target]), use_tqdm=False)[0].outputs[0]
    assert out.token_ids == base[: first + 1] and out.stop_reason == target and out.finish_reason == "stop"
    late = llm.generate("hello world", SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, min_tokens=first + 2,
                                                      stop_token_ids=[target]), use_tqdm=False)[0].outputs[0]
    assert target not in late.token_ids[: first + 2]  # the stop token is banned until min_tokens


def test_logprobs_and_prompt_logprobs(llm):
    out = llm.generate("hello world", SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, logprobs=3,
                                                     prompt_logprobs=2), use_tqdm=False)[0]
    c = out.outputs[0]
    assert len(c.logprobs) == len(c.token_ids) == 5
    for tok, entry in zip(c.token_ids, c.logprobs):
        assert tok in entry and 3 <= len(entry) <= 4
        assert entry[tok].rank == 1  # greedy picks the most likely token
        assert all(isinstance(v, Logprob) and v.logprob <= 0 for v in entry.values())
    assert math.isclose(c.cumulative_logprob, sum(e[t].logprob for t, e in zip(c.token_ids, c.logprobs)), rel_tol=1e-5)
    plp = out.prompt_logprobs
    assert len(plp) == len(out.prompt_token_ids) and plp[0] is None
    for tok, entry in zip(out.prompt_token_ids[1:], plp[1:]):
        assert tok in entry and entry[tok].rank >= 1 and 2 <= len(entry) <= 3
    probs = [math.exp(v.logprob) for v in plp[1].values()]
    assert sum(probs) <= 1.0 + 1e-5


def test_sampled_token_logprobs_do_not_depend_on_the_batch(llm):
    """logprobs=0 asks only for the sampled token's logprob: the same as with top logprobs, next to
    requests that ask for none (whose tokens stay those of a run without it)."""
    sampled = SamplingParams(temperature=1.0, seed=7, max_tokens=6, ignore_eos=True)
    alone = llm.generate(PROMPTS, sampled, use_tqdm=False)
    asking = SamplingParams(temperature=1.0, seed=7, max_tokens=6, ignore_eos=True, logprobs=0)
    mixed = llm.generate(PROMPTS, [asking, sampled, sampled, sampled], use_tqdm=False)
    assert [o.outputs[0].token_ids for o in mixed] == [o.outputs[0].token_ids for o in alone]
    assert all(o.outputs[0].logprobs is None for o in mixed[1:])
    top = llm.generate(PROMPTS[0], SamplingParams(temperature=1.0, seed=7, max_tokens=6, ignore_eos=True, logprobs=2),
                       use_tqdm=False)[0].outputs[0]
    c = mixed[0].outputs[0]
    for tok, entry, wide in zip(c.token_ids, c.logprobs, top.logprobs):
        assert set(entry) == {tok} and entry[tok].logprob < 0
        assert math.isclose(entry[tok].logprob, wide[tok].logprob, rel_tol=1e-5)
        assert entry[tok].rank == wide[tok].rank
    assert math.isclose(c.cumulative_logprob, sum(e[t].logprob for t, e in zip(c.token_ids, c.logprobs)), rel_tol=1e-5)


def test_best_of_keeps_the_most_likely_sequences(llm):
    params = dict(temperature=1.0, seed=11, max_tokens=8, ignore_eos=True)
    every = llm.generate("The quick brown fox", SamplingParams(n=4, logprobs=0, **params), use_tqdm=False)[0].outputs
    ranked = sorted(every, key=lambda c: c.cumulative_logprob, reverse=True)
    assert len({tuple(c.token_ids) for c in every}) > 1
    best = llm.generate("The quick brown fox", SamplingParams(n=2, best_of=4, **params), use_tqdm=False)[0].outputs
    assert [c.token_ids for c in best] == [c.token_ids for c in ranked[:2]]


def test_top_k_sampling_stays_within_greedy_alternatives(llm):
    # With top_k=1 every sampled token must equal the greedy token.
    greedy = llm.generate("import os", SamplingParams(temperature=0, max_tokens=10, ignore_eos=True), use_tqdm=False)
    topk1 = llm.generate("import os", SamplingParams(temperature=1.5, top_k=1, max_tokens=10, ignore_eos=True, seed=5),
                         use_tqdm=False)
    assert topk1[0].outputs[0].token_ids == greedy[0].outputs[0].token_ids


def test_repetition_penalty_changes_output(llm):
    plain = llm.generate("hello hello hello", SamplingParams(temperature=0, max_tokens=16, ignore_eos=True),
                         use_tqdm=False)[0].outputs[0].token_ids
    penalized = llm.generate("hello hello hello", SamplingParams(temperature=0, max_tokens=16, ignore_eos=True,
                                                                 repetition_penalty=5.0), use_tqdm=False)
    ids = penalized[0].outputs[0].token_ids
    assert ids != plain
    # a strong penalty makes immediate repeats rare
    assert sum(a == b for a, b in zip(ids, ids[1:])) <= sum(a == b for a, b in zip(plain, plain[1:]))


def test_bad_input_is_a_value_error_and_the_engine_goes_on(llm):
    with pytest.raises(ValueError, match="longer than the maximum model length"):
        llm.generate({"prompt_token_ids": [5] * 500}, use_tqdm=False)
    with pytest.raises(ValueError):
        llm.generate(["ok", {"prompt_token_ids": [10**6]}], use_tqdm=False)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    out = llm.generate("hello", SamplingParams(max_tokens=3, ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 3
    assert not llm.llm_engine.has_unfinished_requests()


def test_multibyte_text_decodes_cleanly(llm):
    tok = llm.get_tokenizer()
    out = llm.generate("héllo wörld ✓ 日本語 🙂", SamplingParams(temperature=1.0, seed=0, max_tokens=30, ignore_eos=True),
                       use_tqdm=False)[0].outputs[0]
    assert out.text == tok.decode(out.token_ids, skip_special_tokens=True)


def test_model_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        LLM(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="not found.*cache"):
        LLM("some-org/some-model-that-is-not-cached")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text('{"architectures": ["GPTNeoXForCausalLM"]}')
    with pytest.raises(ValueError, match="Supported architectures: .*LlamaForCausalLM"):
        LLM(str(tmp_path / "empty"))


def test_missing_weights_and_bad_dtype_and_small_pool(tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "noweights"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="No weights"):
        LLM(str(folder))
    with pytest.raises(ValueError, match="Unsupported dtype"):
        LLM(tiny_model_dir, dtype="int3")
    with pytest.raises(ValueError, match="max_model_len"):
        LLM(tiny_model_dir, max_model_len=128, num_gpu_blocks_override=4)


def test_bfloat16_runs_and_mostly_agrees(tiny_model_dir, llm):
    bf = LLM(tiny_model_dir, dtype="bfloat16", max_model_len=64, max_num_seqs=4)
    sp = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    a = bf.generate(PROMPTS, sp, use_tqdm=False)
    b = llm.generate(PROMPTS, sp, use_tqdm=False)
    first = [x.outputs[0].token_ids[0] == y.outputs[0].token_ids[0] for x, y in zip(a, b)]
    assert np.mean(first) >= 0.5
