"""Plain-XLA reference for the paged-attention decode kernel.

Gathers every sequence's pages into a dense ``[K, B, W*S, H]`` cache and runs a
masked softmax attention. Slow in memory (it materialises the gathered cache)
but simple; used to check the Pallas kernel and as a fallback.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.kv_quant import dequantize, is_fp8


def paged_attention_reference(
    q, k_pages, v_pages, block_tables, lengths, *, alibi_slopes=None, scale=None, k_scale=None, v_scale=None
) -> jax.Array:
    """Dense reference of :func:`pallas_kernels.paged_attention.paged_attention`.

    ::

        k_pages, v_pages [K, P, S, H]     block_tables [B, W]     lengths [B]
        gathered[k, b, i*S + s] = k_pages[k, block_tables[b, i], s]   -> [K, B, W*S, H]
        key position j is valid iff j < lengths[b]

    Args:
      q: ``[B, N, H]``; N % K == 0.
      k_pages, v_pages: ``[K, P, S, H]`` pools.
      block_tables: int32 ``[B, W]`` page ids in ``[0, P)``.
      lengths: int32 ``[B]`` valid KV tokens per sequence; rows with length 0 give zeros.
      alibi_slopes: optional float32 ``[N]``; bias ``slope[n] * (j - (length - 1))``.
      scale: logit scale, default ``H ** -0.5``.
      k_scale, v_scale: float8 pools: the pools hold ``x / scale`` (default 1.0); the gathered pages
        are dequantized to float32 before the attention.

    Returns:
      ``[B, N, H]`` in ``q.dtype``.
    """
    B, N, H = q.shape
    K, _, S, _ = k_pages.shape
    W = block_tables.shape[1]
    G = N // K
    if scale is None:
        scale = H**-0.5
    k = k_pages[:, block_tables].reshape(K, B, W * S, H)  # [K, B, W*S, H]
    v = v_pages[:, block_tables].reshape(K, B, W * S, H)  # [K, B, W*S, H]
    if is_fp8(k_pages.dtype):
        k = dequantize(k, 1.0 if k_scale is None else k_scale)
        v = dequantize(v, 1.0 if v_scale is None else v_scale)
    qg = q.reshape(B, K, G, H).astype(jnp.float32)  # [B, K, G, H]

    pos = jnp.arange(W * S)  # [W*S]
    lengths = lengths.astype(jnp.int32)
    valid = pos[None, :] < lengths[:, None]  # [B, W*S]
    logits = (
        jnp.einsum("bkgh,kbjh->bkgj", qg, k.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST) * scale
    )  # [B, K, G, W*S]
    if alibi_slopes is not None:
        rel = (pos[None, :] - (lengths[:, None] - 1)).astype(jnp.float32)  # [B, W*S]
        slopes = alibi_slopes.astype(jnp.float32).reshape(K, G)
        logits = logits + slopes[None, :, :, None] * rel[:, None, None, :]
    mask = valid[:, None, None, :]  # [B, 1, 1, W*S]
    logits = jnp.where(mask, logits, -jnp.inf)
    m = jnp.max(logits, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.where(mask, jnp.exp(logits - m), 0.0)  # [B, K, G, W*S]
    denom = p.sum(axis=-1, keepdims=True)
    v = jnp.where(valid[None, :, :, None], v.astype(jnp.float32), 0.0)
    out = jnp.einsum("bkgj,kbjh->bkgh", p, v, precision=jax.lax.Precision.HIGHEST)
    out = out / jnp.where(denom > 0, denom, 1.0)
    return out.reshape(B, N, H).astype(q.dtype)  # [B, N, H]
