"""Every step shape is a bucket compiled once: a run of 50 varied requests never exceeds the bucket count."""

import numpy as np

from jaxllm import LLM, SamplingParams
from jaxllm.runner import compile_counter


def test_50_requests_compile_at_most_one_executable_per_bucket(tiny_model_dir):
    llm = LLM(tiny_model_dir, max_model_len=128, max_num_seqs=8, max_num_batched_tokens=256)
    runner = llm.runner
    rng = np.random.default_rng(0)
    prompts = [{"prompt_token_ids": rng.integers(3, 390, size=int(n)).tolist()} for n in rng.integers(1, 100, 50)]
    params = [SamplingParams(temperature=0, max_tokens=int(m), ignore_eos=True) for m in rng.integers(1, 20, 50)]
    before = compile_counter.num_executables()
    outs = llm.generate(prompts, params, use_tqdm=False)
    compiled = compile_counter.num_executables() - before  # compiled, or loaded from the persistent cache
    assert all(o.finished for o in outs)
    assert [len(o.outputs[0].token_ids) for o in outs] == [p.max_tokens for p in params]
    assert 0 < compiled <= runner.num_buckets, f"{compiled} compilations for {runner.num_buckets} buckets"
    # A second run over the same shapes compiles nothing.
    before = compile_counter.num_executables()
    llm.generate(prompts[:10], params[:10], use_tqdm=False)
    assert compile_counter.num_executables() == before
