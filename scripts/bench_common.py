"""Shared by the benchmark scripts: model shapes with random weights, the measured copy ceiling, rooflines."""

from __future__ import annotations

import json
import os
import tempfile
import time

# Model shapes for `--config NAME` (random weights, no download).
SHAPES = {
    "llama-3-8b": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
        rope_theta=500000.0, rms_norm_eps=1e-5, torch_dtype="bfloat16", tie_word_embeddings=False,
    ),
    "qwen2.5-1.5b": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
        rope_theta=1000000.0, rms_norm_eps=1e-6, torch_dtype="bfloat16", tie_word_embeddings=True,
    ),
    "tiny": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=256, intermediate_size=768, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=4, vocab_size=4096, max_position_embeddings=4096,
        torch_dtype="float32",
    ),
}


def best_of(fn, *args, repeats: int = 5, calls: int = 20) -> float:
    """Seconds per call of `fn(*args)`: best of `repeats` runs of `calls` back-to-back calls, after one
    warm-up call (outputs that are jax arrays are waited for)."""
    import jax

    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t) / calls)
    return best


def model_folder(args) -> tuple[str, str]:
    """(folder, load_format): the real checkpoint of --model, or a config-only folder for --config."""
    if args.model:
        return args.model, "auto"
    if args.config in SHAPES:
        cfg = dict(SHAPES[args.config])
    else:
        with open(args.config) as f:
            cfg = json.load(f)
    folder = tempfile.mkdtemp(prefix="jaxllm-shape-")
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    return folder, "dummy"


def param_bytes(cfg, dtype_bytes: int) -> int:
    d, f, v, n_layers = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_layers
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    layer = d * (q + 2 * kv) + q * d + 3 * d * f
    head = 0 if cfg.tie_word_embeddings else v * d
    return dtype_bytes * (n_layers * layer + v * d + head)


def copy_bandwidth() -> tuple[float, str]:
    """Device-to-device copy bandwidth in bytes/s, measured now (a real memcpy where torch CUDA exists)."""
    try:
        import torch

        if torch.cuda.is_available():
            src = torch.empty(2 * 2**30, dtype=torch.uint8, device="cuda").random_()
            dst = torch.empty_like(src)
            best = float("inf")
            for _ in range(5):
                torch.cuda.synchronize()
                t = time.perf_counter()
                for _ in range(20):
                    dst.copy_(src)
                torch.cuda.synchronize()
                best = min(best, (time.perf_counter() - t) / 20)
            del src, dst
            torch.cuda.empty_cache()
            return 2 * 2 * 2**30 / best, "torch cudaMemcpy D2D (read+write)"
    except ImportError:
        pass
    import jax
    import jax.numpy as jnp

    x = jnp.arange(2**28, dtype=jnp.float32)
    f = jax.jit(lambda a: a * 1.0000001)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(10):
            y = f(x)
        y.block_until_ready()
        best = min(best, (time.perf_counter() - t) / 10)
    return 2 * x.nbytes / best, "jax elementwise (read+write; a lower bound of the ceiling)"


def decode_roofline_s(weights: int, kv_per_token: int, batch: int, context: float, bw: float, devices: int = 1) -> float:
    """Time of one decode step if it only streamed the weights and the batch's KV at `bw` on each device."""
    return (weights + batch * context * kv_per_token) / (bw * devices)


def hf_peer_model(folder: str):
    """The transformers (PyTorch, bf16, CUDA) model with random weights for the same shape, or None."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    config = AutoConfig.from_pretrained(folder)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    return model.eval()
