"""Falcon (falcon-7b, falcon-40b, the RefinedWeb models): fused q/k/v, LayerNorm, GELU MLP, tied head.

The config picks one of three layer shapes (read from `hf_config` after `normalize_hf_config`):

* falcon-7b: multi-query (one kv head), attention and MLP in parallel off one LayerNorm;
* falcon-40b (`new_decoder_architecture`): grouped kv heads, q/k/v fused per group as
  [G queries, 1 key, 1 value], attention and MLP in parallel off two LayerNorms (`ln_attn`, `ln_mlp`),
  or one (`num_ln_in_parallel_attn` = 1);
* otherwise (the RW-1b style): as many kv heads as heads, q/k/v interleaved per head, and with
  `parallel_attn` false a classic sequential block (`input_layernorm`, `post_attention_layernorm`).

Positions are rotary, or ALiBi (`alibi`) with BLOOM's slopes; Falcon adds the bias before scaling,
so the slopes given to the attention are multiplied by 1/sqrt(H).

    embed [V, D]  final_norm, final_norm_bias [D]  (lm_head [D, V])
    layers[i]: wqkv [D, (N + 2K) * H]  wo [N*H, D]  w_up [D, F]  w_down [F, D]  (b* with `bias`)
               attn_norm[_bias] [D]  (mlp_norm[_bias] [D] with two norms or a sequential block)
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
    alibi_slopes,
    apply_rope,
    attention,
    layer_norm,
    linear,
    rope_inv_freq,
)

_LINEARS = {
    "self_attention.query_key_value": "qkv", "self_attention.dense": "o",
    "mlp.dense_h_to_4h": "_up", "mlp.dense_4h_to_h": "_down",
}


def _layout(cfg: ModelConfig) -> tuple[bool, bool, int]:
    """(new decoder architecture?, parallel attention?, number of LayerNorms per layer)."""
    hf = cfg.hf_config
    new_arch = bool(hf.get("new_decoder_architecture", False))
    parallel = new_arch or bool(hf.get("parallel_attn", True))
    if new_arch:
        num_norms = int(hf.get("num_ln_in_parallel_attn") or 2)
    else:
        num_norms = 1 if parallel else 2
    return new_arch, parallel, num_norms


def _norm_names(cfg: ModelConfig) -> dict[str, str]:
    new_arch, parallel, num_norms = _layout(cfg)
    if new_arch and num_norms == 2:
        return {"ln_attn": "attn_norm", "ln_mlp": "mlp_norm"}
    if not parallel:
        return {"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"}
    return {"input_layernorm": "attn_norm"}


def name_table(cfg: ModelConfig) -> dict[str, tuple[tuple, bool]]:
    """Checkpoint name -> (path in the parameter tree, transpose?)."""
    bias = bool(cfg.hf_config.get("bias", False))
    table: dict[str, tuple[tuple, bool]] = {
        "transformer.word_embeddings.weight": (("embed",), False),
        "transformer.ln_f.weight": (("final_norm",), False),
        "transformer.ln_f.bias": (("final_norm_bias",), False),
    }
    if not cfg.tie_word_embeddings:
        table["lm_head.weight"] = (("lm_head",), True)
    for i in range(cfg.num_layers):
        pre = f"transformer.h.{i}."
        for hf, ours in _LINEARS.items():
            table[f"{pre}{hf}.weight"] = (("layers", i, "w" + ours), True)
            if bias:
                table[f"{pre}{hf}.bias"] = (("layers", i, "b" + ours), False)
        for hf, ours in _norm_names(cfg).items():
            table[f"{pre}{hf}.weight"] = (("layers", i, ours), False)
            table[f"{pre}{hf}.bias"] = (("layers", i, ours + "_bias"), False)
    return table


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Checkpoint name -> shape in the checkpoint's (torch) layout; used for random ("dummy") weights."""
    d, f, v, h = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.head_dim
    qkv = (cfg.num_heads + 2 * cfg.num_kv_heads) * h
    linears = {"self_attention.query_key_value": (qkv, d), "self_attention.dense": (d, cfg.num_heads * h),
               "mlp.dense_h_to_4h": (f, d), "mlp.dense_4h_to_h": (d, f)}
    shapes = {
        "transformer.word_embeddings.weight": (v, d), "transformer.ln_f.weight": (d,),
        "transformer.ln_f.bias": (d,), "lm_head.weight": (v, d),
    }
    for i in range(cfg.num_layers):
        pre = f"transformer.h.{i}."
        for name, shape in linears.items():
            shapes[f"{pre}{name}.weight"] = shape
            shapes[f"{pre}{name}.bias"] = (shape[0],)
        for name in ("input_layernorm", "post_attention_layernorm", "ln_attn", "ln_mlp"):
            shapes[f"{pre}{name}.weight"] = shapes[f"{pre}{name}.bias"] = (d,)
    return {k: s for k, s in shapes.items() if k in name_table(cfg)}


def _split_qkv(cfg: ModelConfig, qkv: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """[T, (N + 2K) * H] -> q [T, N, H], k, v [T, K', H], following the checkpoint's packing.

    K is the checkpoint's kv head count (read from the width); when the runner repeats kv heads for
    tensor parallelism (`cfg.num_kv_heads` = K' > K), each head is repeated in place to match.
    """
    t = qkv.shape[0]
    n, h = cfg.num_heads, cfg.head_dim
    kv = (qkv.shape[1] // h - n) // 2
    if cfg.hf_config.get("new_decoder_architecture", False):  # per kv group: G queries, a key, a value
        g = qkv.reshape(t, kv, n // kv + 2, h)
        q, k, v = g[:, :, :-2].reshape(t, n, h), g[:, :, -2], g[:, :, -1]
    elif kv == 1:  # multi-query: all queries, then the key, then the value
        g = qkv.reshape(t, n + 2, h)
        q, k, v = g[:, :n], g[:, n:n + 1], g[:, n + 1:]
    else:
        g = qkv.reshape(t, n, 3, h)  # per head: query, key, value
        q, k, v = g[:, :, 0], g[:, :, 1], g[:, :, 2]
    repeats = cfg.num_kv_heads // kv
    if repeats > 1:
        k, v = jnp.repeat(k, repeats, axis=1), jnp.repeat(v, repeats, axis=1)
    return q, k, v


def _attention(p: dict, tp: int, y, positions, cache, md, slopes, *, cfg: ModelConfig, inv_freq) -> tuple:
    """Attention of `1/tp` of the heads (slopes: theirs). The packed q|k|v weight is whole (its packing
    differs by layout); its product is split as the checkpoint packs it, then cut to this shard's heads."""
    t, h = y.shape[0], cfg.head_dim
    n, kv = cfg.num_heads // tp, cfg.num_kv_heads // tp
    q, k, v = _split_qkv(cfg, linear(y, p, "qkv"))  # [T, N, H], [T, K, H], [T, K, H]
    q, k, v = tensor_parallel.local_heads(q, n), tensor_parallel.local_heads(k, kv), tensor_parallel.local_heads(v, kv)
    if inv_freq is not None:
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
    o, cache = attention(q, k, v, cache, positions, md, scale=h**-0.5, alibi_slopes=slopes)
    return linear(o.reshape(t, n * h), p, "o"), cache


def _mlp(p: dict, tp: int, y, *, act) -> jax.Array:
    return linear(act(linear(y, p, "_up")), p, "_down")


def forward(
    params: dict,
    cfg: ModelConfig,
    tokens: jax.Array,  # [T] int32
    positions: jax.Array,  # [T] int32
    kv_caches: list[tuple[jax.Array, jax.Array]],
    md: AttentionMetadata,
) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
    """Hidden states after the final LayerNorm [T, D], and the pool with this step's K/V written."""
    _, parallel, num_norms = _layout(cfg)
    h, eps = cfg.head_dim, cfg.rms_norm_eps
    slopes = inv_freq = None
    if cfg.hf_config.get("alibi", False):
        slopes = jnp.asarray(alibi_slopes(cfg.num_heads)) * h**-0.5  # [N]
    else:
        inv_freq = rope_inv_freq(h, cfg.rope_theta, cfg.rope_scaling)
    attn = functools.partial(_attention, cfg=cfg, inv_freq=inv_freq)
    mlp = functools.partial(_mlp, act=activation(cfg.hidden_act, cfg.architecture))
    x = tensor_parallel.embed_tokens(params["embed"], tokens)  # [T, D]
    new_caches = []
    for i in range(cfg.num_layers):
        p = params["layers"][i]
        attn_in = layer_norm(x, p["attn_norm"], p["attn_norm_bias"], eps)
        pool = tensor_parallel.pool_spec(kv_caches[i])
        attn_out, cache = tensor_parallel.block(
            attn, p, attn_in, positions, kv_caches[i], md, slopes,
            arg_specs=(P(), P(), pool, P(), P("tp")), extra_spec=pool, bias="bo",
        )
        new_caches.append(cache)
        if parallel:
            mlp_in = layer_norm(x, p["mlp_norm"], p["mlp_norm_bias"], eps) if num_norms == 2 else attn_in
            x = x + (tensor_parallel.block(mlp, p, mlp_in, arg_specs=(P(),), bias="b_down") + attn_out)
        else:
            x = x + attn_out
            mlp_in = layer_norm(x, p["mlp_norm"], p["mlp_norm_bias"], eps)
            x = x + tensor_parallel.block(mlp, p, mlp_in, arg_specs=(P(),), bias="b_down")
    return layer_norm(x, params["final_norm"], params["final_norm_bias"], eps), new_caches


def compute_logits(params: dict, cfg: ModelConfig, hidden: jax.Array) -> jax.Array:
    """[..., D] -> float32 logits [..., V]."""
    if "lm_head" in params:
        return jnp.dot(hidden, params["lm_head"], preferred_element_type=jnp.float32)
    return jnp.einsum("...d,vd->...v", hidden, params["embed"], preferred_element_type=jnp.float32)
