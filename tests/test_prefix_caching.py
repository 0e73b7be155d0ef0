"""Prefix caching: identical outputs with the cache on and off, shared pages, and clean accounting."""

import numpy as np
import pytest

from jaxllm import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


def _prompts(seed: int):
    rng = np.random.default_rng(seed)
    system = rng.integers(3, 390, size=37).tolist()  # shared by the first four
    shared = [{"prompt_token_ids": system + rng.integers(3, 390, size=int(n)).tolist()} for n in (1, 5, 12, 20)]
    unshared = [{"prompt_token_ids": rng.integers(3, 390, size=int(n)).tolist()} for n in (9, 30)]
    return shared + unshared


def _tokens(outs):
    return [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize("variant", ["llama", "mpt"])  # rotary, and ALiBi through the ragged kernel
def test_outputs_identical_with_and_without_prefix_caching(tiny_model_dir, tmp_path, variant):
    path = tiny_model_dir
    if variant == "mpt":
        from tests.models.tiny_arch_models import make_arch_model

        path = str(tmp_path / "mpt")
        make_arch_model(path, "mpt")
    prompts = _prompts(0)
    off = LLM(path, max_model_len=128, enable_prefix_caching=False, block_size=4)
    ref = _tokens(off.generate(prompts, GREEDY, use_tqdm=False))
    on = LLM(path, max_model_len=128, block_size=4)
    warm = on.generate(prompts[:1], GREEDY, use_tqdm=False)  # fills the cache with the system prompt
    assert warm[0].num_cached_tokens == 0
    outs = on.generate(prompts, GREEDY, use_tqdm=False)
    assert _tokens(outs) == ref
    assert [o.num_cached_tokens for o in outs[:4]] == [36, 36, 36, 36]  # 9 full pages of the 37 shared tokens
    bm = on.llm_engine.block_manager
    assert sum(bm.ref_counts[1:]) == 0 and bm.num_free_blocks == bm.num_blocks - 1


def test_repeat_prompt_and_generated_tokens_are_cached(tiny_model_dir):
    llm = LLM(tiny_model_dir, max_model_len=128, block_size=4)
    prompt = {"prompt_token_ids": list(range(5, 30))}
    first = llm.generate(prompt, GREEDY, use_tqdm=False)[0]
    again = llm.generate(prompt, GREEDY, use_tqdm=False)[0]
    assert again.outputs[0].token_ids == first.outputs[0].token_ids
    assert again.num_cached_tokens == 24  # the last token is always recomputed
    # A follow-up turn that extends prompt + answer reuses the pages holding the answer too.
    follow = {"prompt_token_ids": prompt["prompt_token_ids"] + first.outputs[0].token_ids + [7, 8]}
    assert llm.generate(follow, GREEDY, use_tqdm=False)[0].num_cached_tokens >= 28


def test_eviction_under_pressure_keeps_outputs_right(tiny_model_dir):
    # A pool barely larger than one sequence: cached pages must be recycled, never corrupted.
    prompts = _prompts(1)
    ref = _tokens(LLM(tiny_model_dir, max_model_len=64, enable_prefix_caching=False).generate(prompts, GREEDY,
                                                                                            use_tqdm=False))
    llm = LLM(tiny_model_dir, max_model_len=64, block_size=4, num_gpu_blocks_override=20, max_num_seqs=2)
    for _ in range(2):
        assert _tokens(llm.generate(prompts, GREEDY, use_tqdm=False)) == ref
    bm = llm.llm_engine.block_manager
    assert sum(bm.ref_counts[1:]) == 0 and bm.num_free_blocks == 19


def test_reset_prefix_cache(tiny_model_dir):
    llm = LLM(tiny_model_dir, max_model_len=128, block_size=4)
    prompt = {"prompt_token_ids": list(range(5, 30))}
    llm.generate(prompt, GREEDY, use_tqdm=False)
    assert llm.reset_prefix_cache() is True
    assert llm.generate(prompt, GREEDY, use_tqdm=False)[0].num_cached_tokens == 0


def test_prefix_caching_under_tensor_parallelism(tiny_models):
    path, _ = tiny_models["Qwen2ForCausalLM"]
    prompts = _prompts(2)
    ref = _tokens(LLM(path, max_model_len=128, enable_prefix_caching=False).generate(prompts, GREEDY, use_tqdm=False))
    llm = LLM(path, max_model_len=128, block_size=4, tensor_parallel_size=2)
    llm.generate(prompts[:1], GREEDY, use_tqdm=False)
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert _tokens(outs) == ref and outs[1].num_cached_tokens == 36
