"""A request whose activations turn non-finite fails alone, on every attention path.

One token's embedding row is made NaN. A request holding that token is scheduled in the same step as
good requests (packed dense prefill, the chunked/ragged plan, and decode), and its pages are then
reused by later requests. The good requests' greedy tokens must equal those of a clean run.
"""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from jaxllm import LLM, SamplingParams

GOOD = [[5, 17, 33, 2, 9, 41], [12, 7, 7, 19], [3, 28, 11, 6, 50, 22, 14], [44, 8]]


def _run(engine, prompts, params, tag):
    for i, ids in enumerate(prompts):
        engine.add_request(f"{tag}-{i}", {"prompt_token_ids": ids}, params)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0] if out.outputs else None
    return [done[f"{tag}-{i}"] for i in range(len(prompts))]


@pytest.mark.parametrize("chunked,budget", [(False, 64), (True, 64), (True, 8)],
                         ids=["dense-prefill", "chunked-one-step", "chunked-ragged"])
def test_nan_request_leaves_its_batch_and_its_pages_clean(tiny_model_dir, chunked, budget):
    llm = LLM(tiny_model_dir, dtype="float32", enable_chunked_prefill=chunked, max_num_batched_tokens=budget,
              num_gpu_blocks_override=10, max_model_len=64, seed=0)
    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    reference = [o.token_ids for o in _run(engine, GOOD, params, "ref")]
    used = {t for ids in GOOD for t in ids} | {t for ids in reference for t in ids}
    nan_token = next(t for t in range(60, 1000) if t not in used)
    embed = llm.runner.params["embed"]
    llm.runner.params["embed"] = embed.at[nan_token].set(jnp.nan)
    try:
        # The bad request goes in the middle of the batch so that it shares the packed prefill.
        batch = GOOD[:2] + [[4, 9, nan_token, 21, 30]] + GOOD[2:]
        outs = _run(engine, batch, params, "mixed")
    finally:
        llm.runner.params["embed"] = embed
    assert outs[2].finish_reason == "error"
    assert [o.token_ids for o in outs[:2] + outs[3:]] == reference
    # The failed request's pages are free again and the next requests get them: no NaN may remain.
    assert [o.token_ids for o in _run(engine, GOOD, params, "after")] == reference
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks - 1
