"""OPT, Phi, Gemma, MPT, Falcon and GPT-2 (and their variants) against transformers' PyTorch models (fp32).

The same parity checks as the core families (test_parity.py): last-position logits of whole prompts, and
greedy tokens of eight prompts of different lengths decoded in one `LLM.generate` call (prefill, then
the paged-attention kernel, ALiBi included). One engine per variant, shared by its tests.
"""

import jax
import numpy as np
import pytest
import torch

from jaxllm import LLM, SamplingParams
from tests.models.tiny_arch_models import VARIANTS, make_arch_model

PROMPT_LENGTHS = [3, 7, 12, 20, 33, 5, 48, 17]


def _prompts(vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=n).tolist() for n in PROMPT_LENGTHS]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The reference models are tiny: one thread is many times faster than several on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """variant -> (torch model, LLM), built on first use and kept for the module."""
    cache: dict[str, tuple] = {}

    def get(variant: str):
        if variant not in cache:
            path = str(tmp_path_factory.mktemp(variant))
            model, _ = make_arch_model(path, variant, seed=sorted(VARIANTS).index(variant))
            cache[variant] = (model, LLM(path, max_model_len=128, max_num_seqs=8))
        return cache[variant]

    return get


def _packed_last_logits(llm: LLM, prompts: list[list[int]]) -> list[np.ndarray]:
    """Last-position logits of each prompt, all prompts packed into one (jitted) prefill forward pass."""
    import jax
    import jax.numpy as jnp

    from jaxllm.models.layers import AttentionMetadata

    runner = llm.runner
    tokens = jnp.array([t for p in prompts for t in p], jnp.int32)
    positions = jnp.array([i for p in prompts for i in range(len(p))], jnp.int32)
    segments = jnp.array([s for s, p in enumerate(prompts) for _ in p], jnp.int32)
    md = AttentionMetadata(slot_mapping=jnp.zeros(tokens.shape[0], jnp.int32), segment_ids=segments)
    module, cfg = runner.module, runner.model_config
    last = jnp.array(np.cumsum([len(p) for p in prompts]) - 1)

    @jax.jit
    def logits(params, tokens, positions, kv_caches, md):
        hidden, _ = module.forward(params, cfg, tokens, positions, kv_caches, md)
        return module.compute_logits(params, cfg, hidden[last])

    return list(np.asarray(logits(runner.params, tokens, positions, runner.kv_caches, md)))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_last_position_logits_match_transformers(built, variant):
    model, llm = built(variant)
    prompts = _prompts(model.config.vocab_size, seed=1)[:4]
    for prompt, ours in zip(prompts, _packed_last_logits(llm, prompts)):
        with torch.no_grad():
            ref = model(torch.tensor([prompt])).logits[0, -1].numpy()
        rel = np.abs(ours - ref).max() / np.abs(ref).max()
        assert rel < 1e-4, f"{variant}: relative logit error {rel:.2e} (prompt of {len(prompt)} tokens)"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_tokens_match_transformers_generate(built, variant):
    model, llm = built(variant)
    prompts = _prompts(model.config.vocab_size, seed=2)
    refs = []
    for p in prompts:
        gen = model.generate(
            torch.tensor([p]), do_sample=False, max_new_tokens=16, eos_token_id=None, pad_token_id=0,
            use_cache=True,  # MPT's config turns the cache off, which only makes transformers slower
        )
        refs.append(gen[0, len(p):].tolist())
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == refs
    assert all(o.outputs[0].finish_reason == "length" for o in outs)


@pytest.mark.parametrize("num_heads", [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64, 71, 80, 128])
def test_alibi_slopes_match_transformers(num_heads):
    """BLOOM/Falcon slopes and MPT slopes (any `alibi_bias_max`) as transformers computes them in fp32."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    from jaxllm.models.layers import alibi_slopes

    # Both build slope * position; at position 1 (BLOOM) / one key before the query (MPT) that is the slope.
    bloom = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), num_heads, torch.float32)[:, 0, 1].numpy()
    np.testing.assert_allclose(alibi_slopes(num_heads), bloom, rtol=1e-6)
    for bias_max in (8, 4, 16):
        mpt = -build_mpt_alibi_tensor(num_heads, 2, alibi_bias_max=bias_max)[:, 0, 0].numpy()
        np.testing.assert_allclose(alibi_slopes(num_heads, bias_max), mpt, rtol=1e-6)


@pytest.mark.parametrize(("variant", "strip"), [("gpt2", "transformer."), ("opt", "model.")])
def test_checkpoint_saved_from_the_base_model_loads(built, tmp_path, variant, strip):
    """`gpt2` and the early OPT checkpoints name tensors without the LM wrapper's prefix (`h.0...`)."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from jaxllm.config import ModelConfig
    from jaxllm.model_loader import load_params
    from jaxllm.models.registry import get_model_module

    _, llm = built(variant)
    src = llm.model_config.path
    tensors = load_file(f"{src}/model.safetensors")
    renamed = {k[len(strip):]: v for k, v in tensors.items() if k.startswith(strip)}
    save_file(renamed, str(tmp_path / "model.safetensors"))
    shutil.copy(f"{src}/config.json", tmp_path / "config.json")
    cfg = ModelConfig.from_pretrained(str(tmp_path), dtype="float32")
    params = load_params(cfg, get_model_module(cfg.architecture).name_table(cfg), lambda path, host: host)
    ours = jax.tree_util.tree_map(np.asarray, llm.runner.params)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(ours)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ours)):
        np.testing.assert_array_equal(a, b)
