"""Weight-only int8 / fp8 quantized at load time, on every architecture family (fp32 activations).

Per model: the quantized forward pass matches the same forward over the dequantized weights (the
same int8/fp8 values times their scales, as dense float32 matrices) to float32 rounding, and its
greedy choices mostly agree with the unquantized model's; the engine generates end to end.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import LLM, SamplingParams
from jaxllm.model_loader import load_params
from jaxllm.models.layers import AttentionMetadata
from jaxllm.quantization import dequantize_tree, is_linear_leaf, is_quantized
from tests.models.tiny_arch_models import VARIANTS, make_arch_model

PROMPTS = [[5, 17, 42, 99, 7, 3, 250, 31, 8, 64, 12], [9, 120, 33, 4, 77, 200, 15]]
FAMILY_VARIANTS = ["gpt2", "opt-post-ln-proj", "phi", "gemma", "mpt-clip-qkv", "falcon-7b", "falcon-40b",
                   "falcon-alibi"]
CORE = ["LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"]


@pytest.fixture(scope="module")
def arch_paths(tmp_path_factory):
    cache: dict[str, str] = {}

    def get(variant: str) -> str:
        if variant not in cache:
            path = str(tmp_path_factory.mktemp(variant))
            make_arch_model(path, variant, seed=sorted(VARIANTS).index(variant))
            cache[variant] = path
        return cache[variant]

    return get


def _all_logits(runner, params) -> np.ndarray:
    """Logits at every position of the packed PROMPTS (one prefill pass, jitted)."""
    tokens = jnp.array([t for p in PROMPTS for t in p], jnp.int32)
    positions = jnp.array([i for p in PROMPTS for i in range(len(p))], jnp.int32)
    segments = jnp.array([s for s, p in enumerate(PROMPTS) for _ in p], jnp.int32)
    md = AttentionMetadata(slot_mapping=jnp.zeros(tokens.shape[0], jnp.int32), segment_ids=segments)
    module, cfg = runner.module, runner.model_config

    @jax.jit
    def run(params, kv_caches):
        hidden, _ = module.forward(params, cfg, tokens, positions, kv_caches, md)
        return module.compute_logits(params, cfg, hidden)

    return np.asarray(run(params, runner.kv_caches))


def _check(path: str, kind: str, generate: bool):
    llm = LLM(path, quantization=kind, dtype="float32", max_model_len=64, max_num_seqs=2)
    runner = llm.runner
    assert runner.quant_config.method == kind
    linear = []

    def visit(p, leaf):
        keys = tuple(getattr(k, "key", getattr(k, "idx", None)) for k in p)
        if is_linear_leaf(keys, 2):
            linear.append(leaf)

    jax.tree_util.tree_map_with_path(visit, runner.params, is_leaf=is_quantized)
    assert linear and all(is_quantized(w) and w.kind == kind for w in linear)
    assert not is_quantized(runner.params["embed"])

    ours = _all_logits(runner, runner.params)
    deq = _all_logits(runner, dequantize_tree(runner.params))
    rel = np.abs(ours - deq).max() / np.abs(deq).max()
    assert rel < 1e-4, f"{kind}: quantized matmul vs dequantized weights, relative error {rel:.2e}"

    dense_params = load_params(runner.model_config, runner.module.name_table(runner.model_config),
                               lambda _, host: jnp.asarray(host))
    dense = _all_logits(runner, dense_params)
    agree = np.mean(dense.argmax(-1) == ours.argmax(-1))
    assert agree >= (0.85 if kind == "int8" else 0.6), f"{kind}: greedy agreement with the dense model {agree:.2f}"
    if generate:
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS],
                            SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True), use_tqdm=False)
        assert all(len(o.outputs[0].token_ids) == 6 for o in outs)
    return llm


@pytest.mark.parametrize("variant", FAMILY_VARIANTS)
def test_int8_every_family(arch_paths, variant):
    _check(arch_paths(variant), "int8", generate=variant in ("gpt2", "falcon-40b"))


@pytest.mark.parametrize("variant", ["opt", "gemma", "falcon-alibi"])
def test_fp8_families(arch_paths, variant):
    _check(arch_paths(variant), "fp8", generate=variant == "opt")


@pytest.mark.parametrize("arch", CORE)
@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_core_architectures(tiny_models, arch, kind):
    _check(tiny_models[arch][0], kind, generate=arch == "LlamaForCausalLM")


def test_int8_weight_bytes_are_a_quarter(tiny_models):
    llm = LLM(tiny_models["LlamaForCausalLM"][0], quantization="int8", dtype="float32", max_model_len=64,
              max_num_seqs=2)
    quant_bytes = dense_bytes = 0
    for layer in llm.runner.params["layers"].values():
        for leaf in layer.values():
            if is_quantized(leaf):
                quant_bytes += sum(a.addressable_data(0).nbytes for a in jax.tree_util.tree_leaves(leaf))
                dense_bytes += 4 * leaf.shape[0] * leaf.shape[1]
    assert dense_bytes > 0
    assert 0.25 <= quant_bytes / dense_bytes < 0.27  # int8 values plus one float32 scale per column


def test_tensor_parallel_int8_matches_single_device(tiny_models):
    path = tiny_models["LlamaForCausalLM"][0]
    one = LLM(path, quantization="int8", dtype="float32", max_model_len=64, max_num_seqs=2)
    two = LLM(path, quantization="int8", dtype="float32", max_model_len=64, max_num_seqs=2, tensor_parallel_size=2)
    wq = two.runner.params["layers"][0]["wq"]
    assert len(wq.qweight.sharding.device_set) == 2
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    a = [o.outputs[0].token_ids for o in one.generate(prompts, params, use_tqdm=False)]
    b = [o.outputs[0].token_ids for o in two.generate(prompts, params, use_tqdm=False)]
    assert a == b


def test_dummy_weights_quantized(tiny_models):
    llm = LLM(tiny_models["Qwen2ForCausalLM"][0], quantization="fp8", load_format="dummy", max_model_len=64,
              max_num_seqs=1)
    assert is_quantized(llm.runner.params["layers"][0]["w_gate_up"])
    out = llm.generate([{"prompt_token_ids": PROMPTS[0]}], SamplingParams(max_tokens=1, ignore_eos=True),
                       use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 1
