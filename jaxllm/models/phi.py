"""Phi (phi-1, phi-1.5, phi-2): one LayerNorm feeding attention and MLP in parallel, partial rotary
embeddings (the first `partial_rotary_factor * H` dims of each head), biases everywhere, gelu_new MLP,
a final LayerNorm and a biased LM head.

    embed [V, D]   final_norm, final_norm_bias [D]   lm_head [D, V]  lm_head_bias [V]
    layers[i]: norm, norm_bias [D]  wq [D, N*H]  wk, wv [D, K*H]  bq, bk, bv  wo [N*H, D]  bo [D]
               (q_norm, q_norm_bias, k_norm, k_norm_bias [H] with qk_layernorm)
               w_up [D, F]  b_up [F]  w_down [F, D]  b_down [D]
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
    layer_norm,
    matmul,
    rope_inv_freq,
)

_LINEARS = {
    "self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.dense": "o",
    "mlp.fc1": "_up", "mlp.fc2": "_down",
}


def _qk_norm(cfg: ModelConfig) -> bool:
    return bool(cfg.hf_config.get("qk_layernorm", False))


def rotary_dim(cfg: ModelConfig) -> int:
    return int(cfg.head_dim * float(cfg.hf_config.get("partial_rotary_factor", 0.5)))


def name_table(cfg: ModelConfig) -> dict[str, tuple[tuple, bool]]:
    """Checkpoint name -> (path in the parameter tree, transpose?)."""
    table: dict[str, tuple[tuple, bool]] = {
        "model.embed_tokens.weight": (("embed",), False),
        "model.final_layernorm.weight": (("final_norm",), False),
        "model.final_layernorm.bias": (("final_norm_bias",), False),
    }
    if not cfg.tie_word_embeddings:
        table["lm_head.weight"] = (("lm_head",), True)
    table["lm_head.bias"] = (("lm_head_bias",), False)
    for i in range(cfg.num_layers):
        pre = f"model.layers.{i}."
        table[pre + "input_layernorm.weight"] = (("layers", i, "norm"), False)
        table[pre + "input_layernorm.bias"] = (("layers", i, "norm_bias"), False)
        for hf, ours in _LINEARS.items():
            table[f"{pre}{hf}.weight"] = (("layers", i, "w" + ours), True)
            table[f"{pre}{hf}.bias"] = (("layers", i, "b" + ours), False)
        if _qk_norm(cfg):
            for x in ("q", "k"):
                table[f"{pre}self_attn.{x}_layernorm.weight"] = (("layers", i, x + "_norm"), False)
                table[f"{pre}self_attn.{x}_layernorm.bias"] = (("layers", i, x + "_norm_bias"), False)
    return table


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Checkpoint name -> shape in the checkpoint's (torch) layout; used for random ("dummy") weights."""
    d, f, v, h = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.head_dim
    q, kv = cfg.num_heads * h, cfg.num_kv_heads * h
    linears = {"self_attn.q_proj": (q, d), "self_attn.k_proj": (kv, d), "self_attn.v_proj": (kv, d),
               "self_attn.dense": (d, q), "mlp.fc1": (f, d), "mlp.fc2": (d, f)}
    shapes = {
        "model.embed_tokens.weight": (v, d), "model.final_layernorm.weight": (d,),
        "model.final_layernorm.bias": (d,), "lm_head.weight": (v, d), "lm_head.bias": (v,),
    }
    for i in range(cfg.num_layers):
        pre = f"model.layers.{i}."
        shapes[pre + "input_layernorm.weight"] = shapes[pre + "input_layernorm.bias"] = (d,)
        for name, shape in linears.items():
            shapes[f"{pre}{name}.weight"] = shape
            shapes[f"{pre}{name}.bias"] = (shape[0],)
        for x in ("q", "k"):
            for part in ("weight", "bias"):
                shapes[f"{pre}self_attn.{x}_layernorm.{part}"] = (h,)
    return {k: s for k, s in shapes.items() if k in name_table(cfg)}


def _attention(p: dict, tp: int, y, positions, cache, md, *, cfg: ModelConfig, inv_freq) -> tuple:
    """Attention of `1/tp` of the heads: dense-projection rows before their sum [T, D], and the pool."""
    t, h, eps = y.shape[0], cfg.head_dim, cfg.rms_norm_eps
    n, kv = cfg.num_heads // tp, cfg.num_kv_heads // tp
    q = (matmul(y, p["wq"]) + p["bq"]).reshape(t, n, h)
    k = (matmul(y, p["wk"]) + p["bk"]).reshape(t, kv, h)
    v = (matmul(y, p["wv"]) + p["bv"]).reshape(t, kv, h)
    if "q_norm" in p:
        q = layer_norm(q, p["q_norm"], p["q_norm_bias"], eps)
        k = layer_norm(k, p["k_norm"], p["k_norm_bias"], eps)
    q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
    o, cache = attention(q, k, v, cache, positions, md, scale=h**-0.5)
    return matmul(o.reshape(t, n * h), p["wo"]), cache


def _mlp(p: dict, tp: int, y, *, act) -> jax.Array:
    return matmul(act(matmul(y, p["w_up"]) + p["b_up"]), p["w_down"])


def forward(
    params: dict,
    cfg: ModelConfig,
    tokens: jax.Array,  # [T] int32
    positions: jax.Array,  # [T] int32
    kv_caches: list[tuple[jax.Array, jax.Array]],
    md: AttentionMetadata,
) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
    """Hidden states after the final LayerNorm [T, D], and the pool with this step's K/V written."""
    eps = cfg.rms_norm_eps
    inv_freq = rope_inv_freq(rotary_dim(cfg), cfg.rope_theta, cfg.rope_scaling)
    attn = functools.partial(_attention, cfg=cfg, inv_freq=inv_freq)
    mlp = functools.partial(_mlp, act=activation(cfg.hidden_act, cfg.architecture))
    x = tensor_parallel.embed_tokens(params["embed"], tokens)  # [T, D]
    new_caches = []
    for i in range(cfg.num_layers):
        p = params["layers"][i]
        y = layer_norm(x, p["norm"], p["norm_bias"], eps)
        pool = tensor_parallel.pool_spec(kv_caches[i])
        attn_out, cache = tensor_parallel.block(attn, p, y, positions, kv_caches[i], md,
                                                arg_specs=(P(), P(), pool, P()), extra_spec=pool, bias="bo")
        new_caches.append(cache)
        mlp_out = tensor_parallel.block(mlp, p, y, arg_specs=(P(),), bias="b_down")  # parallel to the attention
        x = attn_out + mlp_out + x
    return layer_norm(x, params["final_norm"], params["final_norm_bias"], eps), new_caches


def compute_logits(params: dict, cfg: ModelConfig, hidden: jax.Array) -> jax.Array:
    """[..., D] -> float32 logits [..., V] (with the LM head's bias)."""
    if "lm_head" in params:
        logits = jnp.dot(hidden, params["lm_head"], preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum("...d,vd->...v", hidden, params["embed"], preferred_element_type=jnp.float32)
    return logits + params["lm_head_bias"].astype(jnp.float32)
