"""MPT (mpt-7b, mpt-30b): ALiBi instead of positions, fused q/k/v (optionally clamped to +-clip_qkv),
no biases, LayerNorms without a shift, exact-GELU MLP, LM head tied to the embedding.

ALiBi goes through the shared attention (dense prefill and the paged-attention kernel) as per-head
slopes; MPT scales the exponents to `alibi_bias_max` (see `layers.alibi_slopes`).

    embed [V, D]   final_norm [D]   (lm_head [D, V])
    layers[i]: attn_norm [D]  wqkv [D, 3D]  wo [D, D]  mlp_norm [D]  w_up [D, F]  w_down [F, D]
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxllm.config import ModelConfig
from jaxllm.models import tensor_parallel
from jaxllm.models.layers import AttentionMetadata, activation, alibi_slopes, attention, layer_norm, matmul

_LAYER = {
    "norm_1.weight": ("attn_norm", False),
    "attn.Wqkv.weight": ("wqkv", True),
    "attn.out_proj.weight": ("wo", True),
    "norm_2.weight": ("mlp_norm", False),
    "ffn.up_proj.weight": ("w_up", True),
    "ffn.down_proj.weight": ("w_down", True),
}


def _attn_config(cfg: ModelConfig) -> dict:
    attn = dict(cfg.hf_config.get("attn_config") or {})
    kind = attn.get("attn_type", "multihead_attention")
    if kind != "multihead_attention":
        raise ValueError(f"MPT attn_type {kind!r} is not supported (only multihead_attention).")
    if attn.get("qk_ln"):
        raise ValueError("MPT with qk_ln is not supported.")
    if not attn.get("alibi", True):
        raise ValueError("MPT without ALiBi (learned positions) is not supported.")
    if not cfg.hf_config.get("no_bias", True):
        raise ValueError("MPT with biases (no_bias: false) is not supported.")
    return attn


def name_table(cfg: ModelConfig) -> dict[str, tuple[tuple, bool]]:
    """Checkpoint name -> (path in the parameter tree, transpose?)."""
    _attn_config(cfg)
    table: dict[str, tuple[tuple, bool]] = {
        "transformer.wte.weight": (("embed",), False),
        "transformer.norm_f.weight": (("final_norm",), False),
    }
    if not cfg.tie_word_embeddings:
        table["lm_head.weight"] = (("lm_head",), True)
    for i in range(cfg.num_layers):
        for hf, (ours, transpose) in _LAYER.items():
            table[f"transformer.blocks.{i}.{hf}"] = (("layers", i, ours), transpose)
    return table


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Checkpoint name -> shape in the checkpoint's (torch) layout; used for random ("dummy") weights."""
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    layer = {"norm_1.weight": (d,), "attn.Wqkv.weight": (3 * d, d), "attn.out_proj.weight": (d, d),
             "norm_2.weight": (d,), "ffn.up_proj.weight": (f, d), "ffn.down_proj.weight": (d, f)}
    shapes = {"transformer.wte.weight": (v, d), "transformer.norm_f.weight": (d,), "lm_head.weight": (v, d)}
    for i in range(cfg.num_layers):
        shapes.update({f"transformer.blocks.{i}.{k}": s for k, s in layer.items()})
    return {k: s for k, s in shapes.items() if k in name_table(cfg)}


def _attention(p: dict, tp: int, y, positions, cache, md, slopes, *, cfg: ModelConfig, clip, scale: float):
    """Attention of `1/tp` of the heads (slopes: theirs); the packed q|k|v product is cut to them."""
    t, d, h = y.shape[0], cfg.hidden_size, cfg.head_dim
    n = cfg.num_heads // tp
    qkv = matmul(y, p["wqkv"])  # [T, 3D]
    if clip:
        qkv = jnp.clip(qkv, -clip, clip)
    q, k, v = (tensor_parallel.local_heads(qkv[:, j * d:(j + 1) * d].reshape(t, cfg.num_heads, h), n)
               for j in range(3))
    o, cache = attention(q, k, v, cache, positions, md, scale=scale, alibi_slopes=slopes)
    return matmul(o.reshape(t, n * h), p["wo"]), cache


def _mlp(p: dict, tp: int, y, *, act) -> jax.Array:
    return matmul(act(matmul(y, p["w_up"])), p["w_down"])


def forward(
    params: dict,
    cfg: ModelConfig,
    tokens: jax.Array,  # [T] int32
    positions: jax.Array,  # [T] int32
    kv_caches: list[tuple[jax.Array, jax.Array]],
    md: AttentionMetadata,
) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
    """Hidden states after the final LayerNorm [T, D], and the pool with this step's K/V written."""
    attn_cfg = _attn_config(cfg)
    eps = cfg.rms_norm_eps
    attn = functools.partial(_attention, cfg=cfg, clip=attn_cfg.get("clip_qkv"),
                             scale=attn_cfg.get("softmax_scale") or 1.0 / math.sqrt(cfg.head_dim))
    mlp = functools.partial(_mlp, act=activation(cfg.hidden_act, cfg.architecture))
    slopes = jnp.asarray(alibi_slopes(cfg.num_heads, attn_cfg.get("alibi_bias_max", 8)))  # [N]
    x = tensor_parallel.embed_tokens(params["embed"], tokens)  # [T, D]
    new_caches = []
    for i in range(cfg.num_layers):
        p = params["layers"][i]
        y = layer_norm(x, p["attn_norm"], None, eps)
        pool = tensor_parallel.pool_spec(kv_caches[i])
        o, cache = tensor_parallel.block(attn, p, y, positions, kv_caches[i], md, slopes,
                                         arg_specs=(P(), P(), pool, P(), P("tp")), extra_spec=pool, bias="bo")
        new_caches.append(cache)
        x = x + o
        y = layer_norm(x, p["mlp_norm"], None, eps)
        x = x + tensor_parallel.block(mlp, p, y, arg_specs=(P(),), bias="b_down")
    return layer_norm(x, params["final_norm"], None, eps), new_caches


def compute_logits(params: dict, cfg: ModelConfig, hidden: jax.Array) -> jax.Array:
    """[..., D] -> float32 logits [..., V], times `logit_scale` when the config sets one."""
    if "lm_head" in params:
        logits = jnp.dot(hidden, params["lm_head"], preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum("...d,vd->...v", hidden, params["embed"], preferred_element_type=jnp.float32)
    scale = cfg.hf_config.get("logit_scale")
    if scale is None:
        return logits
    if scale == "inv_sqrt_d_model":
        scale = 1.0 / math.sqrt(cfg.hidden_size)
    return logits * float(scale)
