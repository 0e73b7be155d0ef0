"""Llama, Qwen2 and Mistral: one pure forward function over a parameter pytree.

The three differ only in config: Qwen2 has biases on q/k/v (`attention_bias`), Llama-3 scales its
rotary frequencies (`rope_scaling`), Mistral may declare a sliding window (the engine caps the context
to it). Parameters, with weights stored [in, out] so that `x @ w` needs no transpose:

    embed        [V, D]         final_norm [D]        lm_head [D, V] (absent when tied)
    layers[i]:   input_norm [D]  wq [D, N*H]  wk, wv [D, K*H]  (bq [N*H], bk, bv [K*H])  wo [N*H, D]
                 post_norm [D]   w_gate, w_up [D, F]  w_down [F, D]

After loading, the runner may fuse wq|wk|wv into `w_qkv` and w_gate|w_up into `w_gate_up`
(`fusion.py`); the forward takes either layout. Under tensor parallelism the attention and the MLP
each run per shard with one all-reduce (`tensor_parallel.block`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxllm.config import ModelConfig
from jaxllm.models import tensor_parallel
from jaxllm.models.layers import (
    AttentionMetadata,
    activation,
    apply_rope,
    attention,
    gate_up_projection,
    linear,
    qkv_projection,
    rms_norm,
    rope_inv_freq,
)

SUPPORTS_FUSED_PROJECTIONS = True  # the forward takes w_qkv / w_gate_up (see fusion.py)

_LAYER_WEIGHTS = {
    "self_attn.q_proj": "q",
    "self_attn.k_proj": "k",
    "self_attn.v_proj": "v",
    "self_attn.o_proj": "o",
    "mlp.gate_proj": "_gate",
    "mlp.up_proj": "_up",
    "mlp.down_proj": "_down",
}


def name_table(cfg: ModelConfig) -> dict[str, tuple[tuple, bool]]:
    """Checkpoint name -> (path in the parameter tree, transpose?)."""
    table: dict[str, tuple[tuple, bool]] = {
        "model.embed_tokens.weight": (("embed",), False),
        "model.norm.weight": (("final_norm",), False),
    }
    if not cfg.tie_word_embeddings:
        table["lm_head.weight"] = (("lm_head",), True)
    for i in range(cfg.num_layers):
        pre = f"model.layers.{i}."
        table[pre + "input_layernorm.weight"] = (("layers", i, "input_norm"), False)
        table[pre + "post_attention_layernorm.weight"] = (("layers", i, "post_norm"), False)
        for hf, ours in _LAYER_WEIGHTS.items():
            table[f"{pre}{hf}.weight"] = (("layers", i, "w" + ours), True)
        if cfg.attention_bias:
            for hf in ("q", "k", "v"):
                table[f"{pre}self_attn.{hf}_proj.bias"] = (("layers", i, "b" + hf), False)
        if cfg.mlp_bias:
            for hf, ours in (("gate", "_gate"), ("up", "_up"), ("down", "_down")):
                table[f"{pre}mlp.{hf}_proj.bias"] = (("layers", i, "b" + ours), False)
    return table


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Checkpoint name -> shape in the checkpoint's (torch) layout; used for random ("dummy") weights."""
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    per_layer = {
        "self_attn.q_proj.weight": (q, d), "self_attn.k_proj.weight": (kv, d), "self_attn.v_proj.weight": (kv, d),
        "self_attn.o_proj.weight": (d, q), "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f), "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
        "self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,),
        "mlp.gate_proj.bias": (f,), "mlp.up_proj.bias": (f,), "mlp.down_proj.bias": (d,),
    }
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,), "lm_head.weight": (v, d)}
    for i in range(cfg.num_layers):
        shapes.update({f"model.layers.{i}.{k}": s for k, s in per_layer.items()})
    return {k: s for k, s in shapes.items() if k in name_table(cfg)}


def attention_block(p: dict, tp: int, y, positions, cache, md, *, cfg: ModelConfig, inv_freq) -> tuple:
    """Self-attention of `1/tp` of the heads: o-projection rows before their sum [T, D], and the pool."""
    t = y.shape[0]
    n, kv, h = cfg.num_heads // tp, cfg.num_kv_heads // tp, cfg.head_dim
    q, k, v = qkv_projection(y, p, n, kv, h)  # [T, N, H], [T, K, H], [T, K, H]
    q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
    o, cache = attention(q, k, v, cache, positions, md, scale=h**-0.5)
    return linear(o.reshape(t, n * h), p, "o"), cache


def mlp_block(p: dict, tp: int, y, *, act) -> jax.Array:
    """Gated MLP over `1/tp` of the hidden columns: the down-projection rows before their sum [T, D]."""
    return linear(gate_up_projection(y, p, act), p, "_down")


def forward(
    params: dict,
    cfg: ModelConfig,
    tokens: jax.Array,  # [T] int32
    positions: jax.Array,  # [T] int32
    kv_caches: list[tuple[jax.Array, jax.Array]],  # per layer ([K, P, S, H], [K, P, S, H])
    md: AttentionMetadata,
    norm=None,
    embed_scale: float | None = None,
) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
    """Hidden states after the final norm [T, D], and the pool with this step's K/V written.

    `norm(x, weight, eps)` and `embed_scale` let Gemma reuse the layer (see gemma.py)."""
    norm = norm or rms_norm
    inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    attn = functools.partial(attention_block, cfg=cfg, inv_freq=inv_freq)
    mlp = functools.partial(mlp_block, act=activation(cfg.hidden_act, cfg.architecture))
    x = tensor_parallel.embed_tokens(params["embed"], tokens)  # [T, D]
    if embed_scale is not None:
        x = x * jnp.asarray(embed_scale, x.dtype)
    new_caches = []
    for i in range(cfg.num_layers):  # unrolled on purpose: a scan over layers is slower for decode
        p = params["layers"][i]
        y = norm(x, p["input_norm"], cfg.rms_norm_eps)
        pool = tensor_parallel.pool_spec(kv_caches[i])
        o, cache = tensor_parallel.block(attn, p, y, positions, kv_caches[i], md,
                                         arg_specs=(P(), P(), pool, P()), extra_spec=pool, bias="bo")
        new_caches.append(cache)
        x = x + o
        y = norm(x, p["post_norm"], cfg.rms_norm_eps)
        x = x + tensor_parallel.block(mlp, p, y, arg_specs=(P(),), bias="b_down")
    return norm(x, params["final_norm"], cfg.rms_norm_eps), new_caches


def compute_logits(params: dict, cfg: ModelConfig, hidden: jax.Array) -> jax.Array:
    """[..., D] -> float32 logits [..., V]."""
    if "lm_head" in params:
        return jnp.dot(hidden, params["lm_head"], preferred_element_type=jnp.float32)
    return jnp.einsum("...d,vd->...v", hidden, params["embed"], preferred_element_type=jnp.float32)
