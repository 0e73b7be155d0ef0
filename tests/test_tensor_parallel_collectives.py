"""Explicit tensor-parallel collectives: two all-reduces a layer, a sampler that never gathers the vocabulary,
seeded sampling identical to one device, and the vocab-parallel sampler against the replicated one."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxllm import LLM, SamplingParams
from jaxllm.runner.precompile import example_steps
from jaxllm.runner.sampler import SamplingMetadata, sample
from jaxllm.runner.vocab_parallel_sampler import sample_vocab_parallel

PROMPTS = [{"prompt_token_ids": list(range(5, 5 + n))} for n in (3, 9, 17)]


_COLLECTIVE = re.compile(r"= (.*?) (all-reduce|all-gather|collective-permute|all-to-all|reduce-scatter)\(")


def _decode_collectives(llm) -> list[tuple[str, str]]:
    """(result shape, kind) of every collective in the compiled decode step for one sequence."""
    from jaxllm.runner.model_step import step_inputs

    runner = llm.runner
    _, batch = next(s for s in example_steps(runner.prepare, runner.decode_buckets, runner.prefill_buckets)
                    if s[0].startswith("decode"))
    with runner._mesh_context():
        compiled = runner._compiled(batch.flags).lower(
            runner.params, runner.kv_caches, runner.token_buffer, *step_inputs(batch)).compile()
    return [m.groups() for m in map(_COLLECTIVE.search, compiled.as_text().splitlines()) if m]


@pytest.mark.parametrize("tp", [2, 4])
def test_two_all_reduces_per_layer_and_no_vocab_gather(tiny_models, tp):
    path, _ = tiny_models["Qwen2ForCausalLM"]  # tied embeddings: the LM head is the vocab-split table
    llm = LLM(path, max_model_len=64, max_num_seqs=4, tensor_parallel_size=tp)
    cfg = llm.model_config
    assert cfg.vocab_size % tp == 0
    collectives = _decode_collectives(llm)
    # [1, D] sums: the embedding lookup, then one after each attention and one after each MLP.
    hidden_sums = [c for c in collectives if c == (f"f32[1,{cfg.hidden_size}]{{1,0}}", "all-reduce")]
    assert len(hidden_sums) == 1 + 2 * cfg.num_layers, collectives
    # The sampler exchanges [B]-sized values only: nothing of the vocabulary's size crosses devices.
    assert not [c for c in collectives if re.search(rf"[\[,]{cfg.vocab_size}[\],]", c[0])], collectives
    assert {kind for _, kind in collectives} == {"all-reduce"}, collectives


def test_seeded_sampling_matches_one_device(tiny_models):
    path, _ = tiny_models["Qwen2ForCausalLM"]
    params = SamplingParams(temperature=0.9, seed=7, max_tokens=8, ignore_eos=True, logprobs=2)
    outs = {}
    for tp in (1, 2, 8):
        llm = LLM(path, max_model_len=64, max_num_seqs=4, tensor_parallel_size=tp)
        outs[tp] = llm.generate(PROMPTS, params, use_tqdm=False)
    for tp in (2, 8):
        for a, b in zip(outs[1], outs[tp]):
            assert b.outputs[0].token_ids == a.outputs[0].token_ids, f"tp={tp}"
            for la, lb in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
                assert list(la) == list(lb)
                for tok, lp in la.items():
                    assert abs(lb[tok].logprob - lp.logprob) <= 1e-4 * max(1.0, abs(lp.logprob))
                    assert lb[tok].rank == lp.rank


def test_vocab_parallel_sampler_matches_replicated_sampler():
    """The fast path against its reference: the same ids, logprobs, ranks and top-k, ties included."""
    tp, b, d, v, k = 4, 6, 8, 64, 5
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((b, d)).astype(np.float32)
    head = rng.standard_normal((d, v)).astype(np.float32)
    head[:, 40] = head[:, 3]  # a tie across slices: the first index wins, as with jnp.argmax
    md = SamplingMetadata(
        temperature=np.array([0, 0.7, 1.0, 0, 1.3, 0.5], np.float32), top_k=np.zeros(b, np.int32),
        top_p=np.ones(b, np.float32), min_p=np.zeros(b, np.float32), seed_lo=np.arange(b, dtype=np.uint32),
        seed_hi=np.zeros(b, np.uint32), step=np.arange(b, dtype=np.int32) * 3,
    )
    hidden[0] = 0.0  # every logit equal: greedy picks token 0
    want = sample(jnp.asarray(hidden @ head), md, use_penalties=False, use_bias=False, use_filters=False,
                  use_top_logprobs=True, num_top_logprobs=k)
    mesh = Mesh(np.array(jax.devices()[:tp]), ("tp",))
    params = {"lm_head": jax.device_put(head, NamedSharding(mesh, P(None, "tp")))}

    def logits(h, x):
        return jnp.dot(x, h["lm_head"], preferred_element_type=jnp.float32)

    with jax.set_mesh(mesh):
        got, finite = jax.jit(lambda p, x, m: sample_vocab_parallel(
            logits, p, x, m, tp=tp, use_top_logprobs=True, num_top_logprobs=k))(params, hidden, md)
    np.testing.assert_array_equal(got.token_ids, want.token_ids)
    np.testing.assert_allclose(got.logprobs, want.logprobs, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.ranks, want.ranks)
    np.testing.assert_array_equal(got.top_ids, want.top_ids)
    np.testing.assert_allclose(got.top_logprobs, want.top_logprobs, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(finite) == 1.0)
    with jax.set_mesh(mesh):  # a step where no row asks for logprobs: the same tokens, no logprobs
        plain, finite = jax.jit(lambda p, x, m: sample_vocab_parallel(
            logits, p, x, m, tp=tp, use_top_logprobs=False, num_top_logprobs=k, use_logprobs=False))(
            params, hidden, md)
    np.testing.assert_array_equal(plain.token_ids, want.token_ids)
    assert plain.top_ids is None and not np.asarray(plain.logprobs).any()
    assert np.all(np.asarray(finite) == 1.0)
