"""Gemma (gemma-2b, gemma-7b and their -it versions): the Llama layout with three differences.

* RMSNorm scales by `(1 + w)`, multiplying in float32 before the cast back (Llama casts first);
* the embedding is multiplied by sqrt(D), rounded to the model dtype first (as transformers does);
* the gated MLP uses tanh-approximate GELU (GeGLU); head_dim is set explicitly (256), so N*H may
  differ from D; gemma-2b is multi-query (one kv head); the LM head is tied to the embedding.

The checkpoint names and the parameter tree are Llama's (see llama.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig
from jaxllm.models import llama
from jaxllm.models.layers import AttentionMetadata
from jaxllm.models.llama import compute_logits, hf_shapes, name_table

SUPPORTS_FUSED_PROJECTIONS = True  # the forward takes w_qkv / w_gate_up (see fusion.py)

__all__ = ["compute_logits", "forward", "hf_shapes", "name_table"]


def gemma_rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (x32 * (1.0 + weight.astype(jnp.float32))).astype(x.dtype)


def forward(
    params: dict,
    cfg: ModelConfig,
    tokens: jax.Array,  # [T] int32
    positions: jax.Array,  # [T] int32
    kv_caches: list[tuple[jax.Array, jax.Array]],
    md: AttentionMetadata,
) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
    """Hidden states after the final norm [T, D], and the pool with this step's K/V written."""
    return llama.forward(params, cfg, tokens, positions, kv_caches, md, norm=gemma_rms_norm,
                         embed_scale=cfg.hidden_size**0.5)
