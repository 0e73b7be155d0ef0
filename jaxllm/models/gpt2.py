"""GPT-2: learned absolute positions, pre-LayerNorm blocks, fused q/k/v, gelu_new MLP, tied LM head.

GPT-2's `Conv1D` layers already store their weights [in, out], so nothing is transposed on load.
Checkpoints saved from `GPT2LMHeadModel` prefix names with `transformer.`; the original `gpt2` files
were saved from the base model and have no prefix (found from the checkpoint, see `weight_prefix`).

    embed [V, D]   pos_embed [n_positions, D]   final_norm, final_norm_bias [D]   (lm_head [D, V])
    layers[i]: attn_norm, attn_norm_bias [D]  wqkv [D, 3D]  bqkv [3D]  wo [D, D]  bo [D]
               mlp_norm, mlp_norm_bias [D]    w_up [D, F]  b_up [F]    w_down [F, D]  b_down [D]
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxllm.config import ModelConfig
from jaxllm.models import tensor_parallel
from jaxllm.models.hf_config import weight_prefix
from jaxllm.models.layers import AttentionMetadata, activation, attention, layer_norm, matmul

_LAYER = {
    "ln_1.weight": "attn_norm", "ln_1.bias": "attn_norm_bias",
    "attn.c_attn.weight": "wqkv", "attn.c_attn.bias": "bqkv",
    "attn.c_proj.weight": "wo", "attn.c_proj.bias": "bo",
    "ln_2.weight": "mlp_norm", "ln_2.bias": "mlp_norm_bias",
    "mlp.c_fc.weight": "w_up", "mlp.c_fc.bias": "b_up",
    "mlp.c_proj.weight": "w_down", "mlp.c_proj.bias": "b_down",
}


def _prefix(cfg: ModelConfig) -> str:
    return weight_prefix(cfg.path, "wte.weight", ("transformer.", ""))


def name_table(cfg: ModelConfig) -> dict[str, tuple[tuple, bool]]:
    """Checkpoint name -> (path in the parameter tree, transpose?)."""
    p = _prefix(cfg)
    table: dict[str, tuple[tuple, bool]] = {
        p + "wte.weight": (("embed",), False),
        p + "wpe.weight": (("pos_embed",), False),
        p + "ln_f.weight": (("final_norm",), False),
        p + "ln_f.bias": (("final_norm_bias",), False),
    }
    if not cfg.tie_word_embeddings:
        table["lm_head.weight"] = (("lm_head",), True)
    for i in range(cfg.num_layers):
        for hf, ours in _LAYER.items():
            table[f"{p}h.{i}.{hf}"] = (("layers", i, ours), False)
    return table


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Checkpoint name -> shape as stored (Conv1D: [in, out])."""
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    p = _prefix(cfg)
    layer = {
        "ln_1.weight": (d,), "ln_1.bias": (d,), "ln_2.weight": (d,), "ln_2.bias": (d,),
        "attn.c_attn.weight": (d, 3 * d), "attn.c_attn.bias": (3 * d,),
        "attn.c_proj.weight": (d, d), "attn.c_proj.bias": (d,),
        "mlp.c_fc.weight": (d, f), "mlp.c_fc.bias": (f,),
        "mlp.c_proj.weight": (f, d), "mlp.c_proj.bias": (d,),
    }
    shapes = {
        p + "wte.weight": (v, d), p + "wpe.weight": (cfg.max_position_embeddings, d),
        p + "ln_f.weight": (d,), p + "ln_f.bias": (d,), "lm_head.weight": (v, d),
    }
    for i in range(cfg.num_layers):
        shapes.update({f"{p}h.{i}.{k}": s for k, s in layer.items()})
    return {k: s for k, s in shapes.items() if k in name_table(cfg)}


def _check(cfg: ModelConfig) -> None:
    hf = cfg.hf_config
    if hf.get("add_cross_attention"):
        raise ValueError("GPT-2 with cross-attention (an encoder-decoder) is not supported.")


def _attention(p: dict, tp: int, y, positions, cache, md, *, cfg: ModelConfig, scale: float) -> tuple:
    """Attention of `1/tp` of the heads; the packed q|k|v weight is whole, its product cut to them."""
    t, d, h = y.shape[0], cfg.hidden_size, cfg.head_dim
    n = cfg.num_heads // tp
    qkv = matmul(y, p["wqkv"]) + p["bqkv"]  # [T, 3D]
    q, k, v = (tensor_parallel.local_heads(qkv[:, j * d:(j + 1) * d].reshape(t, cfg.num_heads, h), n)
               for j in range(3))
    o, cache = attention(q, k, v, cache, positions, md, scale=scale)
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
    _check(cfg)
    hf = cfg.hf_config
    eps = cfg.rms_norm_eps
    mlp = functools.partial(_mlp, act=activation(cfg.hidden_act, cfg.architecture))
    scale = cfg.head_dim**-0.5 if hf.get("scale_attn_weights", True) else 1.0
    x = tensor_parallel.embed_tokens(params["embed"], tokens) + params["pos_embed"][positions]  # [T, D]
    new_caches = []
    for i in range(cfg.num_layers):
        p = params["layers"][i]
        y = layer_norm(x, p["attn_norm"], p["attn_norm_bias"], eps)
        layer_scale = scale / (i + 1) if hf.get("scale_attn_by_inverse_layer_idx") else scale
        attn = functools.partial(_attention, cfg=cfg, scale=layer_scale)
        pool = tensor_parallel.pool_spec(kv_caches[i])
        o, cache = tensor_parallel.block(attn, p, y, positions, kv_caches[i], md,
                                         arg_specs=(P(), P(), pool, P()), extra_spec=pool, bias="bo")
        new_caches.append(cache)
        x = x + o
        y = layer_norm(x, p["mlp_norm"], p["mlp_norm_bias"], eps)
        x = x + tensor_parallel.block(mlp, p, y, arg_specs=(P(),), bias="b_down")
    return layer_norm(x, params["final_norm"], params["final_norm_bias"], eps), new_caches


def compute_logits(params: dict, cfg: ModelConfig, hidden: jax.Array) -> jax.Array:
    """[..., D] -> float32 logits [..., V]."""
    if "lm_head" in params:
        return jnp.dot(hidden, params["lm_head"], preferred_element_type=jnp.float32)
    return jnp.einsum("...d,vd->...v", hidden, params["embed"], preferred_element_type=jnp.float32)
