"""A minimal Llama in pure JAX.

Parameter names and layouts are those of Hugging Face's LlamaForCausalLM (linear weights
are ``[out, in]``), so the parameters are saved as they are.
"""

from __future__ import annotations

import math


def param_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, d = cfg["hidden_size"], cfg["head_dim"]
    nh, nkv, inter, v = (
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["intermediate_size"],
        cfg["vocab_size"],
    )
    shapes = {"model.embed_tokens.weight": (v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "self_attn.q_proj.weight"] = (nh * d, h)
        shapes[p + "self_attn.k_proj.weight"] = (nkv * d, h)
        shapes[p + "self_attn.v_proj.weight"] = (nkv * d, h)
        shapes[p + "self_attn.o_proj.weight"] = (h, nh * d)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "mlp.gate_proj.weight"] = (inter, h)
        shapes[p + "mlp.up_proj.weight"] = (inter, h)
        shapes[p + "mlp.down_proj.weight"] = (h, inter)
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (v, h)
    return shapes


def init_params(cfg: dict, seed: int):
    import jax
    import jax.numpy as jnp

    shapes = param_shapes(cfg)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
    std = cfg["initializer_range"]
    # Residual output projections are scaled down with depth (GPT-2 style).
    out_std = std / math.sqrt(2 * cfg["num_hidden_layers"])
    params = {}
    for key, (name, shape) in zip(keys, sorted(shapes.items())):
        if name.endswith("norm.weight"):
            params[name] = jnp.ones(shape, jnp.float32)
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            params[name] = out_std * jax.random.normal(key, shape, jnp.float32)
        else:
            params[name] = std * jax.random.normal(key, shape, jnp.float32)
    return params


def rms_norm(x, weight, eps):
    import jax
    import jax.numpy as jnp

    var = jnp.mean(x * x, axis=-1, keepdims=True)
    return weight * (x * jax.lax.rsqrt(var + eps))


def rope_cos_sin(positions, head_dim: int, theta: float):
    import jax.numpy as jnp

    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # [T, head_dim]
    return jnp.cos(emb), jnp.sin(emb)


def rotate_half(x):
    import jax.numpy as jnp

    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def linear(x, weight):
    """x @ weight.T for a torch-layout [out, in] weight."""
    return x @ weight.T


def forward(params, tokens, cfg: dict):
    """Logits [B, T, vocab] for token ids [B, T] (positions 0..T-1, causal), float32."""
    import jax
    import jax.numpy as jnp

    b, t = tokens.shape
    nh, nkv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    groups = nh // nkv
    eps = cfg["rms_norm_eps"]
    cos, sin = rope_cos_sin(jnp.arange(t), d, cfg["rope_theta"])
    cos, sin = cos[:, None, :], sin[:, None, :]  # [T, 1, D], broadcast over heads
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    scale = 1.0 / math.sqrt(d)

    x = params["model.embed_tokens.weight"][tokens]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, params[p + "input_layernorm.weight"], eps)
        q = linear(h, params[p + "self_attn.q_proj.weight"]).reshape(b, t, nh, d)
        k = linear(h, params[p + "self_attn.k_proj.weight"]).reshape(b, t, nkv, d)
        v = linear(h, params[p + "self_attn.v_proj.weight"]).reshape(b, t, nkv, d)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # Query head j uses kv head j // groups (as Hugging Face's repeat_kv).
        q = q.reshape(b, t, nkv, groups, d)
        scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k) * scale
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores, axis=-1)
        attn = jnp.einsum("bkgqs,bskd->bqkgd", probs, v)
        x = x + linear(attn.reshape(b, t, nh * d), params[p + "self_attn.o_proj.weight"])
        h = rms_norm(x, params[p + "post_attention_layernorm.weight"], eps)
        gate = jax.nn.silu(linear(h, params[p + "mlp.gate_proj.weight"]))
        up = linear(h, params[p + "mlp.up_proj.weight"])
        x = x + linear(gate * up, params[p + "mlp.down_proj.weight"])
    x = rms_norm(x, params["model.norm.weight"], eps)
    return linear(x, params["lm_head.weight"])


def token_nll(params, batch, cfg: dict):
    """Per-token negative log-likelihood [B, T] of batch[:, 1:] given batch[:, :-1]."""
    import jax
    import jax.numpy as jnp

    logits = forward(params, batch[:, :-1], cfg)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, batch[:, 1:, None], axis=-1)[..., 0]
