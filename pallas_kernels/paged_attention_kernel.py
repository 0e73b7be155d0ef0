"""The Pallas programs of the paged-attention decode kernel and their split merge.

Kernel design (written for the Pallas Triton lowering, also runs in interpret
mode on CPU):

* grid = (B, K, k_splits): one program per (sequence, kv head, slice of the
  block table); programs past a sequence's length exit at once.
* the G = N // K query heads sharing a kv head are processed together as the
  rows of one matrix of ``max(16, next_pow2(G))`` rows (a Triton dot needs at
  least 16): row r is query head ``k * G + r % G``, loaded straight from q (no
  padded copy), and only the G real rows are written back.
* the per-head pool is viewed as ``[P * S, H]`` token rows; a compute block of
  ``pages_per_compute_block * S`` tokens is gathered as ONE 2-D tile of rows
  ``block_table[page] * S + offset`` with masked loads (slots past the length are
  not read). A 2-D tile feeds both dots directly, so Triton's software pipeliner
  streams K and V through shared memory with ``cp.async`` (``num_stages``
  deep); the earlier 3-D ``[pages, S, H]`` page gather (``token_rows=False``)
  left V in registers and ran at about 55% of the bandwidth (H200, 2026-11-21).
* every program keeps an online softmax (output, running max m, running sum l)
  in float32 and base 2; with k_splits > 1 the partial states are merged by a
  second small Pallas kernel (or XLA ops), otherwise the kernel writes the
  normalised output itself.
* launch parameters per shape class come from
  :func:`pallas_kernels.paged_attention_config.default_config`
  (measured on an H200; see ``docs/benchmarks.md``).

The wrapper that validates the arguments, chooses the launch configuration and calls
these programs is :func:`pallas_kernels.paged_attention.paged_attention`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

try:  # Triton-specific compiler parameters (num_warps / num_stages).
    from jax.experimental.pallas import triton as _plgpu

    _TritonCompilerParams = getattr(_plgpu, "CompilerParams", None)
except ImportError:  # pragma: no cover - depends on the installed jax
    _TritonCompilerParams = None

# Initial running max: finite so that empty splits / padding rows merge without NaN.
_M_INIT = -1e30
_LOG2E = 1.4426950408889634
# float8 dots: queries are scaled per row so that their largest value is e4m3's largest (448), and the
# probabilities (at most 1) are multiplied by 256 before rounding, which keeps them off e4m3's subnormals.
_E4M3_MAX = 448.0
_P_SCALE = 256.0


def _compact_rows(x, group: int):
    """[Gp, ...] with row r a copy of row r % group  ->  [group, ...] (rows 0..group-1).

    Triton cannot slice a register tile, so the copies are folded away with a reshape
    and an exact masked sum (every copy but the first contributes 0).
    """
    block_g = x.shape[0]
    if block_g == group:
        return x
    copies = block_g // group
    x = x.reshape(copies, group, *x.shape[1:])
    first = lax.broadcasted_iota(jnp.int32, x.shape, 0) == 0
    return jnp.where(first, x, 0).sum(axis=0)


def _decode_kernel(
    lengths_ref,  # [1]
    block_table_ref,  # [W]
    q_ref,  # [N, H]
    k_ref,  # one kv head's pool, [P * S, H] (token_rows) or [P, S, H]; interpret: all heads [K, ...]
    v_ref,  # same as k_ref
    *refs,  # ([N] alibi slopes,) ([2] k/v scales,) then o [Go, H] (+ m [Go], l [Go] with split outputs)
    scale_log2: float,
    group: int,
    block_g: int,
    pages_per_compute_block: int,
    pages_per_split: int,
    use_alibi: bool,
    use_scales: bool,
    compute_dtype,
    precision,
    whole_pool: bool,
    split_outputs: bool,
    compact: bool,
    page_size: int,
    token_rows: bool,
):
    """One (sequence b, kv head k, split) program.

    The ``block_g`` (>= 16, a power of two) query rows are the ``group`` query heads of kv
    head k repeated (row r is head ``k * group + r % group``), so no padded copy of q is
    needed; with ``compact`` the outputs keep only the first ``group`` rows.
    Logits are kept in base 2 (``scale_log2`` includes log2(e)), so m is a base-2 max.

    With ``token_rows`` the pool refs are viewed as ``[P * S, H]`` token rows and a compute
    block is gathered as one 2-D ``[block_k, H]`` tile of slot rows (``page * S + offset``);
    otherwise the refs are ``[P, S, H]`` and whole pages are gathered as ``[ppcb, S, H]``.

    With ``use_scales`` the pool holds float8 pages: tiles are widened to ``compute_dtype`` after the
    load, k_scale is folded into the logit scale and v_scale into the output (both dots are linear).
    With ``compute_dtype`` float8_e4m3fn the tiles stay float8 and both dots take float8 operands: each
    query row is rounded to e4m3 after a per-row scale (folded into its logit scale), the probabilities
    after a fixed one (taken out of the output; the running sum keeps the unrounded probabilities).
    """
    refs = list(refs)
    slopes_ref = refs.pop(0) if use_alibi else None
    scales_ref = refs.pop(0) if use_scales else None
    out_refs = refs
    head_dim = q_ref.shape[-1]
    width = block_table_ref.shape[0]
    ppcb = pages_per_compute_block
    block_k = ppcb * page_size

    head = pl.program_id(1)
    split = pl.program_id(2)
    length = lengths_ref[0]
    first_page = split * pages_per_split
    # Pages of this split that hold at least one valid token.
    valid_pages = jnp.clip(pl.cdiv(length, page_size) - first_page, 0, pages_per_split)
    num_blocks = pl.cdiv(valid_pages, ppcb)

    rows = head * group + lax.rem(jnp.arange(block_g, dtype=jnp.int32), group)  # [Gp]
    fp8_dots = jnp.dtype(compute_dtype) == jnp.dtype(jnp.float8_e4m3fn)
    logit_scale = scale_log2 * scales_ref[0] if use_scales else scale_log2
    if fp8_dots:
        q32 = q_ref[rows].astype(jnp.float32)
        q_scale = jnp.maximum(jnp.max(jnp.abs(q32), axis=-1), 1e-30) / _E4M3_MAX  # [Gp]
        q = (q32 / q_scale[:, None]).astype(compute_dtype)
        logit_scale = (logit_scale * q_scale)[:, None]  # [Gp, 1]
    else:
        q = q_ref[rows].astype(compute_dtype)  # [Gp, H]
    if use_alibi:
        slopes = slopes_ref[rows].astype(jnp.float32) * _LOG2E  # [Gp]

    def page_ids(i):
        # Clamped to the table: entries past the table (or past the length) are masked below.
        if token_rows:  # slot row of every token of the block
            t = jnp.arange(block_k, dtype=jnp.int32)
            idx = first_page + i * ppcb + t // page_size
            pages = block_table_ref[jnp.minimum(idx, width - 1)]  # [block_k]
            return pages * page_size + t % page_size  # [block_k]
        idx = first_page + i * ppcb + jnp.arange(ppcb, dtype=jnp.int32)
        return block_table_ref[jnp.minimum(idx, width - 1)]  # [ppcb]

    def positions(i):
        return (first_page + i * ppcb) * page_size + jnp.arange(block_k, dtype=jnp.int32)  # [block_k]

    def load_kv(ids, valid):
        # Masked loads: slots past the length are neither read nor trusted (they may hold NaN).
        if token_rows:
            mask = jnp.broadcast_to(valid[:, None], (block_k, head_dim))
        else:
            mask = jnp.broadcast_to(valid.reshape(ppcb, page_size, 1), (ppcb, page_size, head_dim))
        if whole_pool:
            # Interpret mode: refs are the whole [K, P, S, H] pool, index the head here. The
            # interpreter has no masked gather, so load and then select (same values).
            k = jnp.where(mask, k_ref[head, ids], 0)
            v = jnp.where(mask, v_ref[head, ids], 0)
        else:
            # A float fill: Triton casts no integer to float8.
            fill = 0.0 if use_scales else 0
            k = _plgpu.load(k_ref.at[ids], mask=mask, other=fill)
            v = _plgpu.load(v_ref.at[ids], mask=mask, other=fill)
        # float8 pages are widened here, in registers (a no-op for pages already in compute_dtype).
        if not fp8_dots:
            k, v = k.astype(compute_dtype), v.astype(compute_dtype)
        return k.reshape(block_k, head_dim), v.reshape(block_k, head_dim)

    def update(carry, k, v, pos):
        o_prev, m_prev, l_prev = carry
        valid = pos < length  # [block_k]
        s = lax.dot_general(
            q, k, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=jnp.float32
        )  # [Gp, block_k]
        s = s * logit_scale
        if use_alibi:
            rel = (pos - (length - 1)).astype(jnp.float32)  # key_pos - query_pos
            s = s + slopes[:, None] * rel[None, :]
        s = jnp.where(valid[None, :], s, -jnp.inf)
        m_next = jnp.maximum(m_prev, s.max(axis=-1))  # [Gp]
        correction = jnp.exp2(m_prev - m_next)  # [Gp]
        p = jnp.exp2(s - m_next[:, None])  # [Gp, block_k]
        l_next = correction * l_prev + p.sum(axis=-1)
        if fp8_dots:
            p8 = (p * _P_SCALE).astype(compute_dtype)
            pv = jnp.dot(p8, v, preferred_element_type=jnp.float32) * (1.0 / _P_SCALE)
        else:
            pv = jnp.dot(p.astype(compute_dtype), v, precision=precision, preferred_element_type=jnp.float32)
        return correction[:, None] * o_prev + pv, m_next, l_next

    init = (
        jnp.zeros((block_g, head_dim), jnp.float32),
        jnp.full((block_g,), _M_INIT, jnp.float32),
        jnp.zeros((block_g,), jnp.float32),
    )

    def body(i, carry):
        pos = positions(i)
        k, v = load_kv(page_ids(i), pos < length)
        return update(carry, k, v, pos)

    o, m, l = lax.fori_loop(0, num_blocks, body, init)
    if use_scales:
        o = o * scales_ref[1]

    fold = (lambda x: _compact_rows(x, group)) if compact else (lambda x: x)
    if split_outputs:
        o_ref, m_ref, l_ref = out_refs
        o_ref[...] = fold(o)
        m_ref[...] = fold(m)
        l_ref[...] = fold(l)
    else:
        (o_ref,) = out_refs
        out = o / jnp.where(l > 0, l, 1.0)[:, None]
        o_ref[...] = fold(out).astype(o_ref.dtype)


def _combine_kernel(o_ref, m_ref, l_ref, out_ref):
    """Merge the split partial states of one (sequence, query head): o [KS, H], m/l [KS]."""
    m = m_ref[...]
    m_max = m.max(axis=0)
    alpha = jnp.exp2(m - m_max)  # [KS]
    l_sum = (l_ref[...] * alpha).sum(axis=0)
    o_sum = (o_ref[...] * alpha[:, None]).sum(axis=0)  # [H]
    out_ref[...] = (o_sum / jnp.where(l_sum > 0, l_sum, 1.0)).astype(out_ref.dtype)


def _combine_splits(o, m, l, *, G: int, dtype, interpret: bool):
    """o [B, K, KS, Go, H], m/l [B, K, KS, Go] (KS a power of two) -> [B, K, G, H] in dtype."""
    B, K, KS, _, H = o.shape
    compiler_params = None
    if not interpret and jax.default_backend() != "tpu":
        compiler_params = _TritonCompilerParams(num_warps=4, num_stages=1)
    return pl.pallas_call(
        _combine_kernel,
        grid=(B, K, G),
        in_specs=[
            pl.BlockSpec((None, None, KS, None, H), lambda b, k, g: (b, k, 0, g, 0)),
            pl.BlockSpec((None, None, KS, None), lambda b, k, g: (b, k, 0, g)),
            pl.BlockSpec((None, None, KS, None), lambda b, k, g: (b, k, 0, g)),
        ],
        out_specs=pl.BlockSpec((None, None, None, H), lambda b, k, g: (b, k, g, 0)),
        out_shape=jax.ShapeDtypeStruct((B, K, G, H), dtype),
        interpret=interpret,
        compiler_params=compiler_params,
        name="paged_attention_combine",
    )(o, m, l)
