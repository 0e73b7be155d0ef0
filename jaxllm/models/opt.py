"""OPT: learned positions (table offset by 2), LayerNorm before (125m, 1.3b+) or after (350m) each block,
ReLU MLP, biases, and optional projections between the embedding width and the model width (350m).

    embed [V, E]  pos_embed [max_pos + 2, D]  (proj_in [E, D]  proj_out [D, E])  (final_norm[_bias] [D])
    (lm_head [E, V] when untied)
    layers[i]: attn_norm[_bias] [D]  wq, wk, wv, wo [D, D] (+ bq, bk, bv, bo [D])
               mlp_norm[_bias] [D]   w_up [D, F] (+ b_up [F])  w_down [F, D] (+ b_down [D])

E is `word_embed_proj_dim` (= D unless the model projects). The norms have no parameters when
`layer_norm_elementwise_affine` is false. Checkpoints saved from the base model name tensors
`decoder.*` instead of `model.decoder.*` (found from the checkpoint).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxllm.config import ModelConfig
from jaxllm.models import tensor_parallel
from jaxllm.models.hf_config import weight_prefix
from jaxllm.models.layers import AttentionMetadata, activation, attention, layer_norm, linear, matmul

_POSITION_OFFSET = 2  # OPT's position table starts two rows in (a fairseq padding convention)

_LINEARS = {
    "self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.out_proj": "o",
    "fc1": "_up", "fc2": "_down",
}
_NORMS = {"self_attn_layer_norm": "attn_norm", "final_layer_norm": "mlp_norm"}


def _prefix(cfg: ModelConfig) -> str:
    return weight_prefix(cfg.path, "embed_tokens.weight", ("model.decoder.", "decoder."))


def _settings(cfg: ModelConfig) -> tuple[int, bool, bool, bool, bool]:
    """(E, pre-norm?, biases?, norm parameters?, final norm?)."""
    hf = cfg.hf_config
    pre = bool(hf.get("do_layer_norm_before", True))
    affine = bool(hf.get("layer_norm_elementwise_affine", True))
    final = pre and not hf.get("_remove_final_layer_norm", False)
    bias = bool(hf.get("enable_bias", True))
    return int(hf.get("word_embed_proj_dim") or cfg.hidden_size), pre, bias, affine, final


def name_table(cfg: ModelConfig) -> dict[str, tuple[tuple, bool]]:
    """Checkpoint name -> (path in the parameter tree, transpose?)."""
    p = _prefix(cfg)
    e, _, bias, affine, final = _settings(cfg)
    table: dict[str, tuple[tuple, bool]] = {
        p + "embed_tokens.weight": (("embed",), False),
        p + "embed_positions.weight": (("pos_embed",), False),
    }
    if e != cfg.hidden_size:
        table[p + "project_in.weight"] = (("proj_in",), True)
        table[p + "project_out.weight"] = (("proj_out",), True)
    if final and affine:
        table[p + "final_layer_norm.weight"] = (("final_norm",), False)
        table[p + "final_layer_norm.bias"] = (("final_norm_bias",), False)
    if not cfg.tie_word_embeddings:
        table["lm_head.weight"] = (("lm_head",), True)
    for i in range(cfg.num_layers):
        pre = f"{p}layers.{i}."
        for hf, ours in _LINEARS.items():
            table[f"{pre}{hf}.weight"] = (("layers", i, "w" + ours), True)
            if bias:
                table[f"{pre}{hf}.bias"] = (("layers", i, "b" + ours), False)
        if affine:
            for hf, ours in _NORMS.items():
                table[f"{pre}{hf}.weight"] = (("layers", i, ours), False)
                table[f"{pre}{hf}.bias"] = (("layers", i, ours + "_bias"), False)
    return table


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Checkpoint name -> shape in the checkpoint's (torch) layout; used for random ("dummy") weights."""
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    e = _settings(cfg)[0]
    p = _prefix(cfg)
    linears = {"self_attn.q_proj": (d, d), "self_attn.k_proj": (d, d), "self_attn.v_proj": (d, d),
               "self_attn.out_proj": (d, d), "fc1": (f, d), "fc2": (d, f)}
    shapes = {
        p + "embed_tokens.weight": (v, e),
        p + "embed_positions.weight": (cfg.max_position_embeddings + _POSITION_OFFSET, d),
        p + "project_in.weight": (d, e), p + "project_out.weight": (e, d),
        p + "final_layer_norm.weight": (d,), p + "final_layer_norm.bias": (d,),
        "lm_head.weight": (v, e),
    }
    for i in range(cfg.num_layers):
        pre = f"{p}layers.{i}."
        for name, shape in linears.items():
            shapes[f"{pre}{name}.weight"] = shape
            shapes[f"{pre}{name}.bias"] = (shape[0],)
        for name in _NORMS:
            shapes[f"{pre}{name}.weight"] = shapes[f"{pre}{name}.bias"] = (d,)
    return {k: s for k, s in shapes.items() if k in name_table(cfg)}


def _norm(x: jax.Array, p: dict, name: str, eps: float) -> jax.Array:
    return layer_norm(x, p.get(name), p.get(name + "_bias"), eps)


def _attention(p: dict, tp: int, y, positions, cache, md, *, cfg: ModelConfig) -> tuple:
    """Attention of `1/tp` of the heads: out-projection rows before their sum [T, D], and the pool."""
    t, h = y.shape[0], cfg.head_dim
    n = cfg.num_heads // tp
    q, k, v = (linear(y, p, name).reshape(t, n, h) for name in ("q", "k", "v"))
    o, cache = attention(q, k, v, cache, positions, md, scale=h**-0.5)
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
    """Hidden states [T, E] (after the final norm and the output projection), and the updated pool."""
    _, pre_norm, _, _, final = _settings(cfg)
    eps = cfg.rms_norm_eps
    attn = functools.partial(_attention, cfg=cfg)
    mlp = functools.partial(_mlp, act=activation(cfg.hidden_act, cfg.architecture))
    x = tensor_parallel.embed_tokens(params["embed"], tokens)  # [T, E]
    if "proj_in" in params:
        x = matmul(x, params["proj_in"])  # [T, D]
    x = x + params["pos_embed"][positions + _POSITION_OFFSET]
    new_caches = []
    for i in range(cfg.num_layers):
        p = params["layers"][i]
        y = _norm(x, p, "attn_norm", eps) if pre_norm else x
        pool = tensor_parallel.pool_spec(kv_caches[i])
        o, cache = tensor_parallel.block(attn, p, y, positions, kv_caches[i], md,
                                         arg_specs=(P(), P(), pool, P()), extra_spec=pool, bias="bo")
        new_caches.append(cache)
        x = x + o
        if not pre_norm:
            x = _norm(x, p, "attn_norm", eps)
        y = _norm(x, p, "mlp_norm", eps) if pre_norm else x
        x = x + tensor_parallel.block(mlp, p, y, arg_specs=(P(),), bias="b_down")
        if not pre_norm:
            x = _norm(x, p, "mlp_norm", eps)
    if final:
        x = _norm(x, params, "final_norm", eps)
    if "proj_out" in params:
        x = matmul(x, params["proj_out"])  # [T, E]
    return x, new_caches


def compute_logits(params: dict, cfg: ModelConfig, hidden: jax.Array) -> jax.Array:
    """[..., E] -> float32 logits [..., V]."""
    if "lm_head" in params:
        return jnp.dot(hidden, params["lm_head"], preferred_element_type=jnp.float32)
    return jnp.einsum("...d,vd->...v", hidden, params["embed"], preferred_element_type=jnp.float32)
