"""Our forward pass and greedy decoding against the transformers PyTorch implementation (fp32)."""

import numpy as np
import pytest
import torch

from jaxllm import LLM, SamplingParams

ARCHS = ["LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"]
PROMPT_LENGTHS = [3, 7, 12, 20, 33, 5, 48, 17]


def _prompts(vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=n).tolist() for n in PROMPT_LENGTHS]


def _hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt])
    gen = model.generate(
        ids, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=None, pad_token_id=0,
    )
    return gen[0, len(prompt):].tolist()


def _our_prompt_logits(llm: LLM, prompt: list[int]) -> np.ndarray:
    """Last-position logits through the model's pure functions, the way the runner calls them."""
    import jax.numpy as jnp

    from jaxllm.models.layers import AttentionMetadata

    runner = llm.runner
    n = len(prompt)
    md = AttentionMetadata(
        slot_mapping=jnp.zeros(n, jnp.int32), segment_ids=jnp.zeros(n, jnp.int32)
    )
    hidden, _ = runner.module.forward(
        runner.params, runner.model_config, jnp.array(prompt, jnp.int32), jnp.arange(n, dtype=jnp.int32),
        runner.kv_caches, md,
    )
    return np.asarray(runner.module.compute_logits(runner.params, runner.model_config, hidden[-1]))


@pytest.mark.parametrize("arch", ARCHS)
def test_last_position_logits_match_transformers(tiny_models, arch):
    path, model = tiny_models[arch]
    llm = LLM(path, max_model_len=128, max_num_seqs=4)
    for prompt in _prompts(model.config.vocab_size, seed=1)[:4]:
        ours = _our_prompt_logits(llm, prompt)
        with torch.no_grad():
            ref = model(torch.tensor([prompt])).logits[0, -1].numpy()
        rel = np.abs(ours - ref).max() / np.abs(ref).max()
        assert rel < 1e-4, f"{arch}: relative logit error {rel:.2e}"


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_tokens_match_transformers_generate(tiny_models, arch):
    path, model = tiny_models[arch]
    prompts = _prompts(model.config.vocab_size, seed=2)
    refs = [_hf_greedy(model, p, 16) for p in prompts]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    # Roomy engine: all eight prompts in one batch.
    llm = LLM(path, max_model_len=128, max_num_seqs=8)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == refs
    assert all(o.outputs[0].finish_reason == "length" for o in outs)


def test_greedy_matches_under_continuous_batching_and_preemption(tiny_models):
    path, model = tiny_models["LlamaForCausalLM"]
    prompts = _prompts(model.config.vocab_size, seed=3)
    refs = [_hf_greedy(model, p, 16) for p in prompts]
    # 3 sequences at a time, pages of 4 tokens, a pool too small for 3 long sequences at once.
    llm = LLM(path, max_model_len=96, max_num_seqs=3, block_size=4, num_gpu_blocks_override=25)
    llm.llm_engine.scheduler.growth_ratio = 0.0  # admit as if nothing grew, so the pool runs short
    outs = llm.generate(
        [{"prompt_token_ids": p} for p in prompts],
        SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True),
        use_tqdm=False,
    )
    assert [o.outputs[0].token_ids for o in outs] == refs
    assert llm.llm_engine.stats["preemptions"] > 0
    bm = llm.llm_engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks - 1  # every page back in the pool
    assert sum(bm.ref_counts[1:]) == 0


def test_text_prompt_matches_transformers_tokenization(tiny_models):
    path, model = tiny_models["Qwen2ForCausalLM"]
    llm = LLM(path, max_model_len=128)
    tok = llm.get_tokenizer()
    out = llm.generate("def fibonacci(n):", SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)[0]
    ids = tok("def fibonacci(n):").input_ids
    assert out.prompt_token_ids == ids
    assert out.prompt == "def fibonacci(n):"
    assert out.outputs[0].token_ids == _hf_greedy(model, ids, 8)
    assert out.outputs[0].text == tok.decode(out.outputs[0].token_ids, skip_special_tokens=True)
