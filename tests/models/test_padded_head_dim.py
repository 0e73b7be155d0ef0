"""A head size that is not a power of two (phi-2 and OPT-2.7b: 80, MPT-30b: 112) is stored zero-padded in
the KV pool on GPUs, whose Triton kernels need power-of-two tiles (`runner/kv_cache.pool_head_dim`).
Forced on here (JAXLLM_KV_POW2_HEAD_DIM=1), the model must give what it gives unpadded and what
transformers gives."""

from __future__ import annotations

import numpy as np
import torch

from jaxllm import LLM, SamplingParams
from tests.tiny_models import make_tiny_model

PROMPTS = [[5, 17, 33, 2, 9, 41, 12], [12, 7, 7, 19], [3, 28, 11]]


def _run(path, monkeypatch, pad: bool):
    monkeypatch.setenv("JAXLLM_KV_POW2_HEAD_DIM", "1" if pad else "0")
    llm = LLM(path, dtype="float32", max_model_len=64, max_num_seqs=4, enable_chunked_prefill=True,
              max_num_batched_tokens=8)  # prompts split: the ragged kernel reads the padded pool
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=2, ignore_eos=True)
    return llm, llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)


def test_padded_pool_gives_the_same_tokens_as_transformers(tmp_path, monkeypatch):
    path = str(tmp_path / "llama-h24")
    model, _ = make_tiny_model(path, "LlamaForCausalLM", hidden_size=96, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=24)
    padded, out_p = _run(path, monkeypatch, True)
    plain, out_u = _run(path, monkeypatch, False)
    assert padded.runner.kv_caches[0][0].shape[-1] == 32 and plain.runner.kv_caches[0][0].shape[-1] == 24
    for prompt, a, b in zip(PROMPTS, out_p, out_u):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for la, lb in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            assert all(abs(la[t].logprob - lb[t].logprob) < 1e-5 for t in la)
        with torch.no_grad():
            ref = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, min_new_tokens=8)
        assert a.outputs[0].token_ids == ref[0, len(prompt):].tolist()
    assert np.isfinite(padded.runner.kv_caches[0][0]).all()
