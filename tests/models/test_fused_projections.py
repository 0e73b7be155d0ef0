"""Fused q|k|v and gate|up weights (`jaxllm/models/fusion.py`) give the same model as separate ones."""

from __future__ import annotations

import numpy as np
import pytest

from jaxllm import LLM, SamplingParams
from tests.models.tiny_arch_models import make_arch_model

PROMPTS = [[3, 14, 15, 92, 65], [35, 89, 79], [32, 38, 46, 26, 43, 38, 32]]


def _run(path, monkeypatch, fuse: bool):
    monkeypatch.setenv("JAXLLM_FUSE_PROJECTIONS", "1" if fuse else "0")
    llm = LLM(path, dtype="float32", max_model_len=64, max_num_seqs=4, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=6, logprobs=3, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return llm, outs


@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM", "gemma"])
def test_fused_layout_equals_separate_weights(arch, tiny_models, tmp_path, monkeypatch):
    if arch in tiny_models:
        path = tiny_models[arch][0]
    else:
        path = str(tmp_path / arch)
        make_arch_model(path, arch)
    fused, out_f = _run(path, monkeypatch, True)
    plain, out_p = _run(path, monkeypatch, False)
    layer_f, layer_p = fused.runner.params["layers"][0], plain.runner.params["layers"][0]
    assert {"w_qkv", "w_gate_up"} <= set(layer_f) and not {"wq", "wk", "wv", "w_gate", "w_up"} & set(layer_f)
    assert {"wq", "w_gate"} <= set(layer_p) and "w_qkv" not in layer_p
    assert ("b_qkv" in layer_f) == ("bq" in layer_p)
    np.testing.assert_array_equal(np.asarray(layer_f["w_qkv"]), np.concatenate(
        [np.asarray(layer_p[n]) for n in ("wq", "wk", "wv")], axis=1))
    for a, b in zip(out_f, out_p):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for lf, lp in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            for tok in lf:
                assert abs(lf[tok].logprob - lp[tok].logprob) < 1e-5


@pytest.mark.parametrize("kind", ["awq", "int8", "fp8"])
def test_quantized_parts_fuse_field_by_field(kind):
    """A fused quantized weight stands for the dense parts side by side (AWQ: eight columns to a word)."""
    import jax.numpy as jnp

    from jaxllm.models.fusion import fuse_layer
    from jaxllm.quantization.awq_layout import pack_weight, pack_zeros
    from jaxllm.quantization.weights import QuantizedWeight, quantize_per_channel

    rng = np.random.default_rng(0)
    k, group, widths = 256, 64, {"q": 96, "k": 32, "v": 32, "_gate": 80, "_up": 80}
    layer = {}
    for name, n in widths.items():
        if kind == "awq":
            q, z = rng.integers(0, 16, (k, n)), rng.integers(0, 16, (k // group, n))
            scales = rng.uniform(0.01, 0.1, (k // group, 8, n // 8)).astype(np.float16)
            layer["w" + name] = QuantizedWeight(jnp.asarray(pack_weight(q, group)), jnp.asarray(scales),
                                                jnp.asarray(pack_zeros(z)), kind="awq", group_size=group, shape=(k, n))
        else:
            layer["w" + name] = quantize_per_channel(jnp.asarray(rng.normal(size=(k, n)), jnp.float32), kind)
        layer["b" + name] = jnp.asarray(rng.normal(size=n), jnp.float32)
    parts = {name: np.asarray(w.dequantize()) for name, w in layer.items() if name.startswith("w")}
    fused = fuse_layer(dict(layer))
    assert set(fused) == {"w_qkv", "b_qkv", "w_gate_up", "b_gate_up"}
    for group_name, names in (("_qkv", ("q", "k", "v")), ("_gate_up", ("_gate", "_up"))):
        w = fused["w" + group_name]
        assert isinstance(w, QuantizedWeight) and w.kind == kind and w.shape == (k, sum(widths[n] for n in names))
        np.testing.assert_array_equal(np.asarray(w.dequantize()), np.concatenate([parts["w" + n] for n in names], 1))
        np.testing.assert_array_equal(np.asarray(fused["b" + group_name]),
                                      np.concatenate([np.asarray(layer["b" + n]) for n in names]))
