"""Tensor parallelism on 8 simulated CPU devices: same tokens and logprobs as one device, real shards."""

import jax
import numpy as np
import pytest

from jaxllm import LLM, SamplingParams

PROMPTS = [{"prompt_token_ids": list(range(5, 5 + n))} for n in (3, 9, 17, 30)]
PARAMS = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=3)

# (architecture, tensor-parallel sizes its heads allow); see tests/tiny_models.py for head counts.
CASES = [
    ("LlamaForCausalLM", (2, 4)),  # 4 query / 2 kv heads: tp=4 repeats each kv head twice
    ("Qwen2ForCausalLM", (2, 4, 8)),  # 8 / 2 heads, tied embeddings, qkv biases
    ("MistralForCausalLM", (2, 4)),  # multi-query: one kv head repeated on every device
]


def _run(path, tp):
    llm = LLM(path, max_model_len=64, max_num_seqs=4, tensor_parallel_size=tp)
    outs = llm.generate(PROMPTS, PARAMS, use_tqdm=False)
    return llm, outs


@pytest.mark.parametrize("arch, sizes", CASES)
def test_tensor_parallel_matches_one_device(tiny_models, arch, sizes):
    assert jax.device_count() >= 8
    path, _ = tiny_models[arch]
    _, ref = _run(path, 1)
    for tp in sizes:
        llm, outs = _run(path, tp)
        for a, b in zip(ref, outs):
            assert b.outputs[0].token_ids == a.outputs[0].token_ids, f"tp={tp}"
            for la, lb in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
                for tok, lp in la.items():
                    assert abs(lb[tok].logprob - lp.logprob) <= 1e-4 * max(1.0, abs(lp.logprob)), f"tp={tp}"
        layer = llm.runner.params["layers"][0]
        cfg = llm.model_config
        wqkv = layer["w_qkv"]  # q|k|v fused shard by shard: each device holds its own heads' columns
        assert wqkv.sharding.spec == jax.sharding.PartitionSpec(None, "tp")
        kv = llm.runner.model_config.num_kv_heads  # repeated up to tp where there are fewer
        width = (cfg.num_heads + 2 * kv) * cfg.head_dim // tp
        assert {s.data.shape for s in wqkv.addressable_shards} == {(cfg.hidden_size, width)}
        assert layer["w_gate_up"].sharding.spec == jax.sharding.PartitionSpec(None, "tp")
        assert layer["wo"].sharding.spec == jax.sharding.PartitionSpec("tp", None)
        k_pages = llm.runner.kv_caches[0][0]
        assert len(k_pages.addressable_shards) == tp
        assert k_pages.addressable_shards[0].data.shape[0] == max(cfg.num_kv_heads, tp) // tp


def test_tensor_parallel_errors(tiny_model_dir):
    with pytest.raises(ValueError, match="larger than the 8 available"):
        LLM(tiny_model_dir, tensor_parallel_size=16)
    with pytest.raises(ValueError, match=r"attention heads \(4\) must be divisible by tensor parallel size \(3\)"):
        LLM(tiny_model_dir, tensor_parallel_size=3)


def test_kv_head_repetition_layout():
    from jaxllm.sharding import repeat_kv_heads

    w = np.arange(2 * 6).reshape(2, 6)  # two heads of dim 3 in the last axis
    out = repeat_kv_heads(w, 2, 3)
    assert out.tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5], [6, 7, 8, 6, 7, 8, 9, 10, 11, 9, 10, 11]]


# Every other family, at tp=2 (tp=4 where the heads allow it), against its own tp=1 run.
ARCH_VARIANTS = [
    ("gpt2", (2, 4)), ("opt", (2, 4)), ("opt-post-ln-proj", (2,)), ("phi", (2,)), ("gemma", (2, 4)),
    ("mpt", (2, 4)), ("mpt-clip-qkv", (2,)), ("falcon-7b", (2, 4)), ("falcon-40b", (2,)), ("falcon-alibi", (2,)),
]


@pytest.mark.parametrize("variant, sizes", ARCH_VARIANTS)
def test_every_architecture_runs_tensor_parallel(tmp_path, variant, sizes):
    from tests.models.tiny_arch_models import make_arch_model

    path = str(tmp_path / variant)
    make_arch_model(path, variant)
    _, ref = _run(path, 1)
    for tp in sizes:
        llm, outs = _run(path, tp)
        assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in ref], f"tp={tp}"
        for a, b in zip(ref, outs):
            for la, lb in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
                tok = next(iter(la))
                assert abs(lb[tok].logprob - la[tok].logprob) <= 1e-4 * max(1.0, abs(la[tok].logprob))
        assert len(llm.runner.kv_caches[0][0].addressable_shards) == tp


@pytest.mark.parametrize("tp", [1, 2])
def test_prompt_logprobs_of_a_step_larger_than_one_chunk(tiny_model_dir, tp):
    """A step of more prompt positions than one prompt-logprob chunk (512) gives each prompt the logprobs
    it gets alone, on one device and sharded."""
    from jaxllm.runner.sampler import PROMPT_LOGPROBS_CHUNK

    rng = np.random.default_rng(5)
    n = PROMPT_LOGPROBS_CHUNK // 100 + 2
    prompts = [{"prompt_token_ids": rng.integers(3, 390, size=int(k)).tolist()} for k in rng.integers(90, 120, n)]
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True, prompt_logprobs=2)
    llm = LLM(tiny_model_dir, max_model_len=128, max_num_seqs=n, max_num_batched_tokens=2048, tensor_parallel_size=tp)
    together = llm.generate(prompts, params, use_tqdm=False)
    assert sum(len(p["prompt_token_ids"]) for p in prompts) > PROMPT_LOGPROBS_CHUNK
    for prompt, out in zip(prompts[:3], together[:3]):
        alone = llm.generate(prompt, params, use_tqdm=False)[0]
        assert len(out.prompt_logprobs) == len(prompt["prompt_token_ids"])
        for a, b in zip(alone.prompt_logprobs[1:], out.prompt_logprobs[1:]):
            assert set(a) == set(b)
            for tok in a:
                assert abs(a[tok].logprob - b[tok].logprob) <= 1e-4 * max(1.0, abs(a[tok].logprob))
                assert a[tok].rank == b[tok].rank
