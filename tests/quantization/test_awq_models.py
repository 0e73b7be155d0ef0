"""AWQ checkpoints end to end: tiny Llama / Qwen2 / Mistral models written in AutoAWQ's GEMM format
(jaxllm/quantization/awq_export.py) against the same models saved dense with the dequantized weights.

In float32 the dequantized weights are exact, so logits agree to float32 rounding and greedy tokens
are identical; the packed weights stay packed on the device.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxllm import LLM, SamplingParams
from jaxllm.quantization import is_quantized
from jaxllm.quantization.awq_export import write_awq_checkpoint
from tests.quantization.dense_checkpoint import write_dense_checkpoint
from tests.tiny_models import make_tiny_model

PROMPT_LENGTHS = [3, 7, 12, 20, 33, 5, 48, 17]
# Hidden sizes that are multiples of the group size; heads chosen so that kv widths are multiples of 8.
MODELS = {
    "LlamaForCausalLM": (128, dict(hidden_size=128, intermediate_size=256, num_attention_heads=4,
                                  num_key_value_heads=2)),
    "Qwen2ForCausalLM": (32, dict(hidden_size=128, intermediate_size=192, num_attention_heads=8,
                                  num_key_value_heads=2)),
    "MistralForCausalLM": (-1, dict(hidden_size=128, intermediate_size=256)),  # one group per column
}


def _prompts(vocab: int, seed: int, lengths=PROMPT_LENGTHS) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=n).tolist() for n in lengths]


@pytest.fixture(scope="module")
def awq_models(tmp_path_factory):
    """arch -> (AWQ folder, dense folder of the dequantized weights, torch source folder)."""
    out = {}
    for i, (arch, (group, overrides)) in enumerate(MODELS.items()):
        src = str(tmp_path_factory.mktemp(f"{arch}-src"))
        make_tiny_model(src, arch, seed=10 + i, **overrides)
        awq = str(tmp_path_factory.mktemp(f"{arch}-awq"))
        dense = write_awq_checkpoint(src, awq, group_size=group)
        ref = str(tmp_path_factory.mktemp(f"{arch}-dense"))
        write_dense_checkpoint(awq, ref, dense)
        out[arch] = (awq, ref, src)
    return out


@pytest.fixture(scope="module")
def engines(awq_models):
    """arch -> (AWQ engine, dense engine), float32, built on first use."""
    cache = {}

    def get(arch):
        if arch not in cache:
            awq, ref, _ = awq_models[arch]
            kw = dict(dtype="float32", max_model_len=128, max_num_seqs=8)
            cache[arch] = (LLM(awq, **kw), LLM(ref, **kw))
        return cache[arch]

    return get


def _last_logits(llm: LLM, prompt: list[int]) -> np.ndarray:
    import jax.numpy as jnp

    from jaxllm.models.layers import AttentionMetadata

    runner = llm.runner
    n = len(prompt)
    md = AttentionMetadata(slot_mapping=jnp.zeros(n, jnp.int32), segment_ids=jnp.zeros(n, jnp.int32))
    module, cfg = runner.module, runner.model_config

    @jax.jit
    def run(params, tokens, kv_caches):
        hidden, _ = module.forward(params, cfg, tokens, jnp.arange(n, dtype=jnp.int32), kv_caches, md)
        return module.compute_logits(params, cfg, hidden[-1])

    return np.asarray(run(runner.params, jnp.array(prompt, jnp.int32), runner.kv_caches))


@pytest.mark.parametrize("arch", list(MODELS))
def test_logits_match_dense_dequantized_checkpoint(engines, arch):
    awq, dense = engines(arch)
    # detected from config.json's quantization_config: no quantization argument was given
    assert awq.runner.quant_config.method == "awq"
    layer = awq.runner.params["layers"][0]
    for name in ("w_qkv", "wo", "w_gate_up", "w_down"):  # q|k|v and gate|up fused, field by field
        w = layer[name]
        assert is_quantized(w) and w.kind == "awq" and w.qweight.dtype == np.int32
        assert w.qweight.shape == (w.shape[0], w.shape[1] // 8)  # 4 bits a weight, still packed
    if arch == "Qwen2ForCausalLM":
        assert "b_qkv" in layer and not is_quantized(layer["b_qkv"])
    for prompt in _prompts(awq.model_config.vocab_size, seed=1)[:4]:
        ours, ref = _last_logits(awq, prompt), _last_logits(dense, prompt)
        rel = np.abs(ours - ref).max() / np.abs(ref).max()
        assert rel < 1e-4, f"{arch}: relative logit error {rel:.2e}"


def test_pallas_kernel_inside_the_model(engines, monkeypatch):
    """The GPU path on the CPU: every AWQ layer the kernel fits goes through it (interpret mode)."""
    from jaxllm.quantization import awq_kernel

    monkeypatch.setenv("JAXLLM_AWQ_MATMUL", "pallas")
    calls = []
    real = awq_kernel.awq_matmul_pallas
    monkeypatch.setattr(awq_kernel, "awq_matmul_pallas", lambda x, w: calls.append(w.shape) or real(x, w))
    awq, dense = engines("LlamaForCausalLM")
    prompt = _prompts(awq.model_config.vocab_size, seed=6, lengths=[9])[0]
    ours, ref = _last_logits(awq, prompt), _last_logits(dense, prompt)
    assert (128, 128) in calls and (128, 256) in calls and (256, 128) in calls  # q/o, gate/up, down
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4


def test_gemv_kernel_inside_the_model(engines, monkeypatch):
    """The decode-sized kernel (up to 8 rows) on every AWQ layer, interpret mode, against the dense model."""
    from jaxllm.quantization import awq_gemv

    monkeypatch.setenv("JAXLLM_AWQ_MATMUL", "gemv")
    calls = []
    real = awq_gemv.awq_gemv_pallas
    monkeypatch.setattr(awq_gemv, "awq_gemv_pallas", lambda x, w: calls.append((x.shape[0], w.shape)) or real(x, w))
    awq, dense = engines("LlamaForCausalLM")
    prompt = _prompts(awq.model_config.vocab_size, seed=7, lengths=[7])[0]
    ours, ref = _last_logits(awq, prompt), _last_logits(dense, prompt)
    assert {(7, (128, 128)), (7, (128, 256)), (7, (256, 128))} <= set(calls)
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM"])
def test_greedy_tokens_identical(engines, arch):
    awq, dense = engines(arch)
    prompts = [{"prompt_token_ids": p} for p in _prompts(awq.model_config.vocab_size, seed=2)]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    a = [o.outputs[0].token_ids for o in awq.generate(prompts, params, use_tqdm=False)]
    b = [o.outputs[0].token_ids for o in dense.generate(prompts, params, use_tqdm=False)]
    assert a == b


def test_explicit_awq_and_fp16_default(awq_models, engines):
    """quantization="awq" given explicitly; activations in the checkpoint's fp16."""
    awq_path, _, _ = awq_models["LlamaForCausalLM"]
    _, dense = engines("LlamaForCausalLM")
    llm = LLM(awq_path, quantization="awq", max_model_len=128, max_num_seqs=8)  # dtype from the checkpoint
    assert llm.model_config.dtype == "float16"
    assert llm.runner.params["layers"][0]["w_qkv"].scales.dtype == np.float16
    prompts = [{"prompt_token_ids": p} for p in _prompts(llm.model_config.vocab_size, seed=3)]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    ref = [o.outputs[0].token_ids for o in dense.generate(prompts, params, use_tqdm=False)]
    first = np.mean([g[0] == r[0] for g, r in zip(got, ref)])
    assert first >= 0.75, f"fp16 AWQ vs fp32 dense: first greedy tokens agree for {first:.0%} of prompts"


def test_weight_bytes_packed(engines):
    awq, dense = engines("LlamaForCausalLM")
    packed = full = 0
    for layer_q, layer_d in zip(awq.runner.params["layers"].values(), dense.runner.params["layers"].values()):
        for leaf in layer_q.values():
            if is_quantized(leaf):
                packed += sum(a.addressable_data(0).nbytes for a in jax.tree_util.tree_leaves(leaf))
        # the dense model holds the same linear weights, some fused (w_qkv, w_gate_up)
        full += sum(w.nbytes for name, w in layer_d.items() if name.startswith("w") and w.ndim == 2)
    # 4 bits a weight against 32, plus an fp16 scale and a 4-bit zero per group of 128 (32 for Qwen)
    assert 1 / 8 <= packed / full < 1 / 8 + 0.02


def test_quant_config_json_and_unconverted_modules(awq_models, tmp_path):
    """AutoAWQ's quant_config.json instead of quantization_config, and a layer left dense."""
    _, _, src = awq_models["LlamaForCausalLM"]
    dense = write_awq_checkpoint(src, str(tmp_path / "awq"), group_size=64, quant_config_file=True,
                                 in_config=False, skip=("mlp.down_proj",))
    write_dense_checkpoint(str(tmp_path / "awq"), str(tmp_path / "ref"), dense)
    awq = LLM(str(tmp_path / "awq"), dtype="float32", max_model_len=64, max_num_seqs=2)
    layer = awq.runner.params["layers"][1]
    assert is_quantized(layer["w_gate_up"]) and not is_quantized(layer["w_down"])
    ref = LLM(str(tmp_path / "ref"), dtype="float32", max_model_len=64, max_num_seqs=2)
    prompt = _prompts(awq.model_config.vocab_size, seed=4)[2]
    ours, want = _last_logits(awq, prompt), _last_logits(ref, prompt)
    assert np.abs(ours - want).max() / np.abs(want).max() < 1e-4


def test_tensor_parallel_awq_matches_single_device(awq_models, engines):
    awq_path, _, _ = awq_models["Qwen2ForCausalLM"]  # 2 kv heads: tp=4 repeats them (packed)
    one, _ = engines("Qwen2ForCausalLM")
    prompts = [{"prompt_token_ids": p} for p in _prompts(one.model_config.vocab_size, seed=5)[:4]]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    want = [o.outputs[0].token_ids for o in one.generate(prompts, params, use_tqdm=False)]
    four = LLM(awq_path, dtype="float32", max_model_len=128, max_num_seqs=8, tensor_parallel_size=4)
    wq = four.runner.params["layers"][0]["wq"]
    assert len(wq.qweight.sharding.device_set) == 4
    assert wq.qweight.addressable_shards[0].data.shape == (128, 128 // 8 // 4)  # split on the packed columns
    got = [o.outputs[0].token_ids for o in four.generate(prompts, params, use_tqdm=False)]
    assert got == want


def test_missing_awq_tensor_is_named(awq_models, tmp_path):
    from safetensors.numpy import load_file, save_file

    awq_path, _, _ = awq_models["LlamaForCausalLM"]
    tensors = load_file(os.path.join(awq_path, "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.scales"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    shutil.copy(os.path.join(awq_path, "config.json"), tmp_path / "config.json")
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.scales"):
        LLM(str(tmp_path), skip_tokenizer_init=True, max_model_len=64, max_num_seqs=2)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"version": "gemv"}, "version 'gemv'"),
        ({"bits": 8}, "8 bits"),
        ({"quant_method": "gptq"}, "GPTQ"),
        ({"quant_method": "fp8"}, "FP8 checkpoints"),
    ],
)
def test_unsupported_formats_raise_from_llm(awq_models, tmp_path, change, match):
    awq_path, _, _ = awq_models["LlamaForCausalLM"]
    with open(os.path.join(awq_path, "config.json")) as f:
        config = json.load(f)
    config["quantization_config"].update(change)
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copy(os.path.join(awq_path, "model.safetensors"), tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=match):
        LLM(str(tmp_path), skip_tokenizer_init=True, max_model_len=64, max_num_seqs=2)


def test_dummy_awq_runs(awq_models):
    awq_path, _, _ = awq_models["MistralForCausalLM"]
    llm = LLM(awq_path, load_format="dummy", dtype="bfloat16", max_model_len=64, max_num_seqs=1)
    w = llm.runner.params["layers"][0]["w_down"]
    assert is_quantized(w) and w.kind == "awq"
    out = llm.generate([{"prompt_token_ids": [5, 6, 7]}], SamplingParams(max_tokens=1, ignore_eos=True),
                       use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 1
