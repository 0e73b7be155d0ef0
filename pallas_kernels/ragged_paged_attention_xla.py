"""Ragged paged attention in plain XLA, with the Pallas kernel's arguments and query-block plan.

Each query block of the plan (Qb tokens of one sequence, see `ragged_paged_attention.query_blocks`)
gathers only the pages of its sequence's block-table row, so the work is proportional to the blocks and
the table width, never to the size of the pool:

    q [T, N, H] -> blocks [Qn, Qb, K, G, H]       pages = block_tables[block_rows]  [Qn, W]
    k_pages [K, P, S, H] -> k [K, Qn, W*S, H]     token at position p sees keys 0..p of its own row

This is what runs where the Pallas kernel would run in interpret mode (the CPU), whose interpreter
copies every operand, the whole pool included, on each call.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("scale", "qb"))
def ragged_paged_attention_xla(
    q, k_pages, v_pages, positions, block_tables, block_rows, block_starts, block_lens, *, alibi_slopes=None,
    scale=None, qb=16,
):
    """Same contract as `pallas_kernels.ragged_paged_attention.ragged_paged_attention`.

    q [T, N, H]; k_pages, v_pages [K, P, S, H]; positions [T]; block_tables [R, W]; block_rows /
    block_starts / block_lens [Qn] (a block covers at most `qb` consecutive tokens of one row);
    alibi_slopes [N] adds slope * (key_pos - query_pos). Softmax in float32. Returns [T, N, H]; tokens not
    covered by any block come back as zeros.
    """
    t, n, h = q.shape
    kh, _, page_size, _ = k_pages.shape
    g = n // kh
    qn, w = block_rows.shape[0], block_tables.shape[1]
    length = w * page_size
    scale = h**-0.5 if scale is None else scale
    valid = jnp.arange(qb)[None, :] < block_lens[:, None]  # [Qn, Qb]
    idx = jnp.where(valid, block_starts[:, None] + jnp.arange(qb)[None, :], t)  # t: an all-zero extra token
    qblk = jnp.concatenate([q, jnp.zeros((1, n, h), q.dtype)])[idx].reshape(qn, qb, kh, g, h)
    pos = jnp.concatenate([positions, jnp.zeros((1,), positions.dtype)])[idx]  # [Qn, Qb]
    pages = block_tables[block_rows]  # [Qn, W]
    k = k_pages[:, pages].reshape(kh, qn, length, h)  # [K, Qn, L, H]
    v = v_pages[:, pages].reshape(kh, qn, length, h)
    s = jnp.einsum("iqkgh,kilh->ikgql", qblk.astype(jnp.float32), k.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST) * scale  # [Qn, K, G, Qb, L]
    kpos = jnp.arange(length)
    if alibi_slopes is not None:
        rel = (kpos[None, None, :] - pos[:, :, None]).astype(jnp.float32)  # [Qn, Qb, L]
        s = s + alibi_slopes.astype(jnp.float32).reshape(kh, g)[None, :, :, None, None] * rel[:, None, None]
    mask = ((kpos[None, None, :] <= pos[:, :, None]) & valid[:, :, None])[:, None, None]  # [Qn, 1, 1, Qb, L]
    s = jnp.where(mask, s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.where(mask, jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0)), 0.0)
    denom = p.sum(axis=-1, keepdims=True)
    # Slots past the block's last query hold stale or unwritten values: never multiply them, even by 0.
    last = jnp.max(jnp.where(valid, pos, -1), axis=1)  # [Qn]
    v = jnp.where((kpos[None, :] <= last[:, None])[None, :, :, None], v.astype(jnp.float32), 0.0)
    o = jnp.einsum("ikgql,kilh->iqkgh", p, v, precision=jax.lax.Precision.HIGHEST)  # [Qn, Qb, K, G, H]
    o = o / jnp.where(denom > 0, denom, 1.0).transpose(0, 3, 1, 2, 4)
    packed = jnp.zeros((t + 1, n, h), q.dtype).at[idx.reshape(-1)].set(o.reshape(qn * qb, n, h).astype(q.dtype))
    return packed[:t]
