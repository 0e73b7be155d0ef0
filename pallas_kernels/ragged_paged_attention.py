"""Paged attention for chunks of queries: each packed query token attends to its own sequence's pages.

The tokens of one step are packed back to back (prompt chunks of several sequences, possibly after a
cached prefix). Their K/V are already written to the pool, so every query simply attends to the pool
pages of its sequence up to its own position (causal within the chunk, full over the prefix):

    q [T, N, H] packed:   [ a5 a6 a7 | b0 b1 | pad ]      positions [5 6 7 0 1 0]
    q blocks (Qb = 2):    (row a, start 0, len 2) (row a, start 2, len 1) (row b, start 3, len 2)
    block_tables [R, W]:  row a -> pages of a, row b -> pages of b

Grid (q block, kv head): a program loads Qb query tokens x G heads, walks the sequence's pages up to its
last query's position with an online softmax in float32, and writes its own output block; the wrapper
scatters blocks back to the packed layout. `ragged_paged_attention_reference` is the plain-jnp truth.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.kv_quant import dequantize, is_fp8, kernel_scales

try:  # Triton's compiler parameters: passing them selects the Triton lowering on every jax version
    from jax.experimental.pallas import triton as _plgpu

    _TritonCompilerParams = getattr(_plgpu, "CompilerParams", None)
except ImportError:  # pragma: no cover - depends on the installed jax
    _TritonCompilerParams = None

_M_INIT = -1e30


def _kernel(
    row_ref, start_ref, len_ref, pos_ref, bt_ref, slope_ref, q_ref, k_ref, v_ref, *refs, scale, qb, g, ppcb, precision
):
    # refs: ([2] k/v scales of float8 pages,) o. float8 tiles are widened to q's dtype in registers and the
    # scales folded into the logits and the output (both dots are linear in the pages).
    scales_ref, o_ref = refs if len(refs) == 2 else (None, refs[0])
    i, head = pl.program_id(0), pl.program_id(1)
    row, start, n = row_ref[i], start_ref[i], len_ref[i]
    page_size, head_dim = k_ref.shape[-2], k_ref.shape[-1]
    block_k = ppcb * page_size
    q = q_ref[pl.ds(start, qb), pl.ds(head * g, g), :].reshape(qb * g, head_dim)  # [Qb*G, H]
    logit_scale = scale if scales_ref is None else scale * scales_ref[0]
    pos = pos_ref[pl.ds(start, qb)]  # [Qb]
    pos = jnp.broadcast_to(pos[:, None], (qb, g)).reshape(qb * g)  # [Qb*G]
    valid_q = jnp.broadcast_to((jnp.arange(qb) < n)[:, None], (qb, g)).reshape(qb * g)
    last = jnp.max(jnp.where(valid_q, pos, -1))
    slopes = jnp.broadcast_to(slope_ref[pl.ds(head * g, g)][None, :], (qb, g)).reshape(qb * g)  # ALiBi
    num_blocks = pl.cdiv(pl.cdiv(last + 1, page_size), ppcb)

    def body(j, carry):
        o_prev, m_prev, l_prev = carry
        ids = bt_ref[row, pl.ds(j * ppcb, ppcb)]
        k = k_ref[head, ids].reshape(block_k, head_dim).astype(q.dtype)
        v = v_ref[head, ids].reshape(block_k, head_dim).astype(q.dtype)
        kpos = j * block_k + jnp.arange(block_k)
        mask = (kpos[None, :] <= pos[:, None]) & valid_q[:, None]
        s = lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=precision,
                            preferred_element_type=jnp.float32) * logit_scale
        s = s + slopes[:, None] * (kpos[None, :] - pos[:, None]).astype(jnp.float32)
        s = jnp.where(mask, s, -jnp.inf)
        m_next = jnp.maximum(m_prev, s.max(axis=-1))
        corr = jnp.exp(m_prev - m_next)
        p = jnp.exp(s - m_next[:, None])
        v = jnp.where((kpos <= last)[:, None], v, 0)
        pv = jnp.dot(p.astype(v.dtype), v, precision=precision, preferred_element_type=jnp.float32)
        return corr[:, None] * o_prev + pv, m_next, corr * l_prev + p.sum(axis=-1)

    o = jnp.zeros((qb * g, head_dim), jnp.float32)
    m = jnp.full((qb * g,), _M_INIT, jnp.float32)
    l = jnp.zeros((qb * g,), jnp.float32)
    o, m, l = lax.fori_loop(0, num_blocks, body, (o, m, l))
    o = o / jnp.where(l > 0, l, 1.0)[:, None]
    if scales_ref is not None:
        o = o * scales_ref[1]
    o_ref[...] = o.reshape(qb, g, head_dim).astype(o_ref.dtype)


def query_blocks(row_starts: np.ndarray, row_lens: np.ndarray, qb: int, num_blocks: int):
    """Host-side plan: (row, start, len) of every block of at most `qb` query tokens (a block never spans
    two sequences), padded to `num_blocks` with empty blocks."""
    row_starts, row_lens = np.asarray(row_starts, np.int64), np.asarray(row_lens, np.int64)
    per_row = -(-row_lens // qb)
    total = int(per_row.sum())
    if total > num_blocks:
        raise ValueError(f"{total} query blocks exceed the bucket of {num_blocks}")
    rows, starts, lens = (np.zeros(num_blocks, np.int32) for _ in range(3))
    owner = np.repeat(np.arange(len(row_lens)), per_row)
    offset = (np.arange(total) - np.repeat(np.cumsum(per_row) - per_row, per_row)) * qb
    rows[:total] = owner
    starts[:total] = row_starts[owner] + offset
    lens[:total] = np.minimum(qb, row_lens[owner] - offset)
    return rows, starts, lens


@functools.partial(jax.jit, static_argnames=("scale", "qb", "pages_per_step", "num_warps", "num_stages", "interpret"))
def ragged_paged_attention(
    q, k_pages, v_pages, positions, block_tables, block_rows, block_starts, block_lens, *, alibi_slopes=None,
    scale=None, k_scale=None, v_scale=None, qb=16, pages_per_step=None, num_warps=4, num_stages=3, interpret=None,
):
    """Attention of packed query chunks over the paged pool.

    q [T, N, H]; k_pages, v_pages [K, P, S, H]; positions [T] (each token's position in its sequence);
    block_tables [R, W]; block_rows / block_starts / block_lens [Qn] from `query_blocks` (a block never
    spans two sequences); alibi_slopes [N] adds slope * (key_pos - query_pos); k_scale, v_scale: float8 pools
    only, the scalars the pages were divided by (default 1.0). Returns [T, N, H]; tokens not covered by any
    block come back as zeros. The launch: `qb` query tokens a program (the plan's block size),
    `pages_per_step` pages a step of its loop (a power of two; default up to 8), and Triton's
    `num_warps` / `num_stages` (scripts/bench_ragged_attention.py times them).
    """
    t, n, h = q.shape
    kh, p_, s_, _ = k_pages.shape
    g = n // kh
    if scale is None:
        scale = h**-0.5
    if g & (g - 1):
        # Triton tiles must have power-of-two sizes, and a program holds Qb * G query rows: pad each kv
        # head's group of query heads (6 for Qwen2.5-1.5B) with zero queries, dropped afterwards.
        gp = 1 << (g - 1).bit_length()
        qp = jnp.pad(q.reshape(t, kh, g, h), ((0, 0), (0, 0), (0, gp - g), (0, 0))).reshape(t, kh * gp, h)
        sp = None if alibi_slopes is None else jnp.pad(alibi_slopes.reshape(kh, g), ((0, 0), (0, gp - g))).reshape(-1)
        out = ragged_paged_attention(qp, k_pages, v_pages, positions, block_tables, block_rows, block_starts,
                                     block_lens, alibi_slopes=sp, scale=scale, k_scale=k_scale, v_scale=v_scale,
                                     qb=qb, pages_per_step=pages_per_step, num_warps=num_warps,
                                     num_stages=num_stages, interpret=interpret)
        return out.reshape(t, kh, gp, h)[:, :, :g].reshape(t, n, h)
    scales = kernel_scales(k_pages, k_scale, v_scale)  # [2] float32, or None
    qn = block_rows.shape[0]
    w = block_tables.shape[1]
    ppcb = pages_per_step or min(8, 1 << (w - 1).bit_length())  # a power of two (Triton tile sizes)
    if ppcb & (ppcb - 1):
        raise ValueError(f"pages_per_step must be a power of two, got {ppcb}")
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    w_pad = -(-w // ppcb) * ppcb
    block_tables = jnp.pad(block_tables, ((0, 0), (0, w_pad - w)))
    q_pad = jnp.pad(q, ((0, qb), (0, 0), (0, 0)))  # a block may read past the last token
    pos_pad = jnp.pad(positions, (0, qb))
    slopes = jnp.zeros((n,), jnp.float32) if alibi_slopes is None else alibi_slopes.astype(jnp.float32)
    params = {}
    if not interpret and jax.default_backend() != "tpu" and _TritonCompilerParams is not None:
        params["compiler_params"] = _TritonCompilerParams(num_warps=num_warps, num_stages=num_stages)
    whole = pl.BlockSpec(memory_space=pl.ANY) if interpret else None
    full = lambda shape: whole or pl.BlockSpec(shape, lambda i, hh: (0,) * len(shape))
    smem = lambda shape: pl.BlockSpec(shape, lambda i, hh: (0,) * len(shape))
    out = pl.pallas_call(
        functools.partial(_kernel, scale=float(scale), qb=qb, g=g, ppcb=ppcb,
                          precision=lax.Precision.HIGHEST if q.dtype == jnp.float32 else None),  # no TF32
        grid=(qn, kh),
        in_specs=[
            smem((qn,)), smem((qn,)), smem((qn,)), smem((t + qb,)), smem((block_tables.shape[0], w_pad)), smem((n,)),
            full((t + qb, n, h)), full((kh, p_, s_, h)), full((kh, p_, s_, h)),
        ] + ([] if scales is None else [smem((2,))]),
        out_specs=pl.BlockSpec((None, qb, g, h), lambda i, hh: (i, 0, hh, 0)),
        out_shape=jax.ShapeDtypeStruct((qn, qb, n, h), q.dtype),
        interpret=interpret,
        **params,
    )(block_rows, block_starts, block_lens, pos_pad, block_tables, slopes, q_pad, k_pages, v_pages,
      *([] if scales is None else [scales]))
    # Scatter blocks back to packed order; rows past a block's length go to a discarded extra slot.
    idx = block_starts[:, None] + jnp.arange(qb)[None, :]  # [Qn, Qb]
    idx = jnp.where(jnp.arange(qb)[None, :] < block_lens[:, None], idx, t)
    packed = jnp.zeros((t + 1, n, h), q.dtype).at[idx.reshape(-1)].set(out.reshape(qn * qb, n, h))
    return packed[:t]


def ragged_paged_attention_reference(
    q, k_pages, v_pages, positions, segment_rows, block_tables, *, alibi_slopes=None, scale=None, k_scale=None,
    v_scale=None,
):
    """Plain jnp: token t attends to pool positions 0..positions[t] of row segment_rows[t] (-1 = padding).

    float8 pools are dequantized (``page * scale``, scales default 1.0) before the attention."""
    t, n, h = q.shape
    kh = k_pages.shape[0]
    g = n // kh
    scale = h**-0.5 if scale is None else scale
    rows = jnp.maximum(segment_rows, 0)
    pages = block_tables[rows]  # [T, W]
    k = k_pages[:, pages].reshape(kh, t, -1, h)  # [K, T, W*S, H]
    v = v_pages[:, pages].reshape(kh, t, -1, h)
    if is_fp8(k_pages.dtype):
        k = dequantize(k, 1.0 if k_scale is None else k_scale)
        v = dequantize(v, 1.0 if v_scale is None else v_scale)
    qg = q.reshape(t, kh, g, h)
    s = jnp.einsum("tkgh,ktlh->tkgl", qg.astype(jnp.float32), k.astype(jnp.float32)) * scale
    kpos = jnp.arange(k.shape[2])
    if alibi_slopes is not None:
        rel = (kpos[None, :] - positions[:, None]).astype(jnp.float32)  # [T, L]
        s = s + alibi_slopes.reshape(kh, g)[None, :, :, None] * rel[:, None, None, :]
    mask = (kpos[None, :] <= positions[:, None]) & (segment_rows >= 0)[:, None]
    s = jnp.where(mask[:, None, None, :], s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    p = jnp.where(mask[:, None, None, :], p, 0.0)
    v = jnp.where(mask[None, :, :, None], v, 0)  # slots a token may not see can hold garbage (NaN)
    o = jnp.einsum("tkgl,ktlh->tkgh", p, v.astype(jnp.float32))
    return o.reshape(t, n, h).astype(q.dtype)
