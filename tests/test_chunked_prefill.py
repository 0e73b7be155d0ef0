"""Chunked prefill: the same greedy outputs for any token budget, with and without prefix caching."""

import numpy as np
import pytest

from jaxllm import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    system = rng.integers(3, 390, size=37).tolist()
    shared = [{"prompt_token_ids": system + rng.integers(3, 390, size=int(n)).tolist()} for n in (1, 5, 12, 20)]
    return shared + [{"prompt_token_ids": rng.integers(3, 390, size=int(n)).tolist()} for n in (1, 9, 30, 70)]


@pytest.fixture(scope="module")
def reference(tiny_model_dir, prompts):
    llm = LLM(tiny_model_dir, max_model_len=128, enable_prefix_caching=False, enable_chunked_prefill=False)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY, use_tqdm=False)]


@pytest.mark.parametrize("budget", [16, 64, None])
@pytest.mark.parametrize("prefix_caching", [False, True])
def test_any_chunk_size_gives_the_same_tokens(tiny_model_dir, prompts, reference, budget, prefix_caching):
    llm = LLM(tiny_model_dir, max_model_len=128, max_num_batched_tokens=budget, enable_prefix_caching=prefix_caching,
              block_size=4, max_num_seqs=4)
    steps = []
    original = llm.runner.dispatch

    def spy(sched, bm):
        steps.append((sched.is_prefill, sched.num_new))
        return original(sched, bm)

    llm.runner.dispatch = spy
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == reference
    if budget is not None:
        assert all(sum(n) <= budget for _, n in steps)  # the budget holds every step
        assert any(p and 1 in n and max(n) > 1 for p, n in steps)  # decodes and prompt chunks shared a step
    bm = llm.llm_engine.block_manager
    assert sum(bm.ref_counts[1:]) == 0 and bm.num_free_blocks == bm.num_blocks - 1


def test_prompt_longer_than_the_budget_needs_chunking(tiny_model_dir):
    with pytest.raises(ValueError, match="enable chunked prefill"):
        LLM(tiny_model_dir, max_model_len=128, max_num_batched_tokens=32, enable_chunked_prefill=False)
    llm = LLM(tiny_model_dir, max_model_len=128, max_num_batched_tokens=32)
    out = llm.generate({"prompt_token_ids": list(range(3, 103))}, GREEDY, use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 10


def test_a_large_step_of_fresh_prompts_attends_through_the_ragged_kernel(tiny_model_dir):
    """Past DENSE_PREFILL_MAX_TOKENS a step of fresh prompts leaves dense attention ([heads, T, T] scores)
    for the ragged kernel; the tokens are those of small dense steps."""
    from jaxllm.runner.input_batch import DENSE_PREFILL_MAX_TOKENS

    rng = np.random.default_rng(1)
    n = DENSE_PREFILL_MAX_TOKENS // 100 + 2
    prompts = [{"prompt_token_ids": rng.integers(3, 390, size=int(k)).tolist()} for k in rng.integers(100, 118, n)]
    small = LLM(tiny_model_dir, max_model_len=128, max_num_batched_tokens=512, max_num_seqs=n)
    expected = [o.outputs[0].token_ids for o in small.generate(prompts, GREEDY, use_tqdm=False)]
    del small
    llm = LLM(tiny_model_dir, max_model_len=128, max_num_batched_tokens=2 * DENSE_PREFILL_MAX_TOKENS, max_num_seqs=n)
    batches = []
    original = llm.runner.prepare

    def spy(sched, bm):
        batch = original(sched, bm)
        batches.append(batch)
        return batch

    llm.runner.prepare = spy
    outs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == expected
    big = [b for b in batches if b.is_prefill and len(b.tokens) > DENSE_PREFILL_MAX_TOKENS]
    assert big and all(b.segment_ids is None and b.q_block_rows is not None for b in big)
    assert all(b.segment_ids is not None for b in batches if b.is_prefill and b.num_seqs == n and
               len(b.tokens) <= DENSE_PREFILL_MAX_TOKENS)
