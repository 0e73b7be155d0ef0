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
